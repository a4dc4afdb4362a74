import time, pytest
from tests import test_salesforce_webhooks as t

pytestmark = []
async def test_phases(harness, fake, tmp_path):
    from tests.harness import drain, load_directory
    from core.npi import make_npi
    contacts = [(f"0035g{index:010d}AAA", make_npi(f"1{index:08d}")) for index in range(100)]
    rows = "".join(f"{npi},Pat{i},Lung{i},MD,Pulmonary Disease,NJ,pat{i}@lung.example\n" for i, (_, npi) in enumerate(contacts))
    await load_directory(harness.rt, tmp_path, "npi,first_name,last_name,credential,specialty,state,email\n" + rows)
    t0 = time.monotonic()
    r = await harness.client.post("/webhooks/salesforce/outbound", content=t.outbound_message(contacts, 0), headers=t.SOAP_HEADERS)
    t1 = time.monotonic()
    import cProfile, pstats
    pr = cProfile.Profile(); pr.enable()
    await drain(harness.rt)
    pr.disable()
    t2 = time.monotonic()
    print("post", t1-t0, "drain", t2-t1, len(harness.smtp.messages))
    pstats.Stats(pr).sort_stats("cumulative").print_stats(40)
from tests.test_salesforce_webhooks import fake_server, fake, config_text  # noqa
