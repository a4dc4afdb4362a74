"""Per receiving domain limits: provider grouping, the token bucket, and a rate answer
slowing the whole domain. A fake clock: no test here waits on wall time."""

from __future__ import annotations

from datetime import timedelta

from config.schema import Delivery, DomainLimit
from core.domains import DomainLimiter, group_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_provider_domains_are_one_group() -> None:
    assert {group_of(a) for a in ("dr@gmail.com", "dr@googlemail.com")} == {"gmail"}
    assert {group_of(a) for a in ("dr@outlook.com", "dr@hotmail.com", "dr@live.com", "dr@msn.com")} == {"microsoft"}
    assert {group_of(a) for a in ("dr@yahoo.com", "dr@aol.com")} == {"yahoo"}
    assert {group_of(a) for a in ("dr@icloud.com", "dr@me.com")} == {"apple"}
    assert group_of("dr@Clinic.Example") == "clinic.example"


def test_rate_is_a_token_bucket_per_group() -> None:
    clock = Clock()
    limiter = DomainLimiter(Delivery(per_domain=DomainLimit(concurrency=2, rate=2)), clock=clock)
    assert [limiter.wait_for("clinic.example") for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limiter.wait_for("other.example") == 0.0, "another domain has its own bucket"
    clock.now += 0.5
    assert limiter.wait_for("clinic.example") == 0.0


def test_a_rate_answer_slows_the_domain_for_a_while() -> None:
    clock = Clock()
    delivery = Delivery(providers={"microsoft": DomainLimit(concurrency=4, rate=8)}, slow_down=timedelta(minutes=10))
    limiter = DomainLimiter(delivery, clock=clock)
    assert limiter.rate("microsoft") == 8
    assert limiter.slow_down("microsoft") == 4
    assert limiter.slow_down("microsoft") == 2, "a second answer while slowed halves again"
    assert limiter.rate("gmail") == delivery.per_domain.rate, "other domains keep their pace"
    clock.now += 601
    assert limiter.rate("microsoft") == 8


async def test_slots_cap_concurrent_transactions_per_group() -> None:
    import asyncio

    limiter = DomainLimiter(Delivery(per_domain=DomainLimit(concurrency=2, rate=1000)))
    inside: list[int] = []
    current = 0

    async def send(address: str) -> None:
        nonlocal current
        async with limiter.slot(address):
            current += 1
            inside.append(current)
            await asyncio.sleep(0)
            current -= 1

    await asyncio.gather(*(send(f"dr{i}@clinic.example") for i in range(6)))
    assert max(inside) == 2
