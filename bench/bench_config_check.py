"""`config check` of a generated config with 200 campaigns and 500 trigger rules: time to
parse, validate and render every template against its samples (target < 2 s), in process and
as the `trigger-email config check` command (which adds the interpreter's start-up).

    python bench/bench_config_check.py [CAMPAIGNS] [RULES]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sys.path)

from config import load_config
from config.templating import _strict_template

SPECIALTIES = ["Pulmonary Disease", "Allergy & Immunology", "Internal Medicine", "Cardiovascular Disease", "Pediatrics"]
STATES = ["NJ", "NY", "PA", "CA", "TX", "FL", "IL", "MA"]


def generate(campaigns: int, rules: int) -> str:
    lines = [
        "public_url: https://trigger.pharma.example",
        'sender: {from: "Medical Information <medinfo@pharma.example>", postal_address: "1 Main St, Springfield, NJ 07081"}',
        "limits:",
        "  per_hcp: {max: 3, per: 7d}",
        '  quiet_hours: {from: "20:00", to: "07:00", days: [sat, sun]}',
        "crm:",
        "  hubspot: {client_secret: secret}",
        "  salesforce: {instance_url: https://example.my.salesforce.com, organization_id: 00D000000000001AAA}",
        "campaigns:",
    ]
    for index in range(campaigns):
        lines += [
            f"  - id: campaign-{index}",
            f"    name: Campaign {index}",
            *(["    extends: campaign-0", f'    subject: "Update {index} for {{{{ hcp.specialty }}}}"'] if index % 10 == 9 else [
                "    subjects:",
                f'      - {{text: "News {index} for {{{{ hcp.specialty }}}} practices", weight: 1}}',
                f'      - {{text: "Dr. {{{{ hcp.last_name }}}}, news {index}", weight: 1}}',
                "    ab: {decide_after: 500 sends, metric: click_rate}",
                "    html: |",
                "      <html><body><p>Dear Dr. {{ hcp.last_name }},</p>",
                f"      <p>Campaign {index} for {{{{ hcp.specialty }}}} in {{{{ hcp.state }}}}.</p>",
                "      {% if data.content is defined %}<p>You read {{ data.content.title }}.</p>{% endif %}",
                "      {% for item in data.get('items', []) %}<li>{{ item }}</li>{% endfor %}",
                '      <p><a href="https://pharma.example/a">Read</a></p></body></html>',
                '    resend: {after: 3d, max: 2, subject: "In case you missed it: {{ subject }}"}',
                "    cooldown: 30d",
                f'    audience: {{specialties: ["{SPECIALTIES[index % 5]}"], states: ["{STATES[index % 8]}", "{STATES[(index + 3) % 8]}"]}}',
                "    data_example: {content: {title: Phase 3 results}, items: [a, b]}",
            ]),
        ]
    lines.append("triggers:")
    for index in range(rules):
        target = f"campaign-{index % campaigns}"
        kind = index % 5
        if kind == 0:
            lines.append(f'  - {{from: hubspot, on: form_submission, where: {{form_id: "form-{index}"}}, send: {target}}}')
        elif kind == 1:
            lines.append(f'  - {{from: hubspot, on: page_view, where: {{url: "https://pharma.example/p{index}/*"}}, send: {target}}}')
        elif kind == 2:
            lines.append(f"  - {{from: salesforce, on: record_change, where: {{object: Contact, field: Interest__c, equals: T{index}}}, send: {target}}}")
        elif kind == 3:
            lines.append(f"  - {{from: email, on: clicked, where: {{campaign: campaign-{(index + 1) % campaigns}, link: \"https://pharma.example/*\"}}, send: {target}}}")
        else:
            lines.append(f"  - {{from: email, on: no_engagement, where: {{campaign: campaign-{(index + 2) % campaigns}, after: 7d}}, send: {target}}}")
    return "\n".join(lines) + "\n"


def main(campaigns: int, rules: int) -> None:
    path = Path(tempfile.mkdtemp()) / "big.yaml"
    path.write_text(generate(campaigns, rules))
    timings, cpu = [], []
    for _ in range(5):
        _strict_template.cache_clear()  # each run compiles every template, as a fresh process does
        start, started_cpu = time.perf_counter(), time.process_time()
        config = load_config(path, env={})
        timings.append(time.perf_counter() - start)
        cpu.append(time.process_time() - started_cpu)
    assert len(config.campaigns) == campaigns and len(config.triggers) == rules
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "trigger_email", "config", "check", str(path)],
                            capture_output=True, text=True, env={"PATH": "", "DATABASE_URL": "sqlite:////nonexistent/x.db"},
                            cwd=common.ROOT)
    command = time.perf_counter() - start
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"config: {campaigns} campaigns, {rules} rules, {path.stat().st_size // 1024} KiB of YAML")
    print(f"load + check in process: best {min(timings):.3f} s, median {sorted(timings)[2]:.3f} s (target < 2 s); "
          f"CPU best {min(cpu):.3f} s")
    print(f"`trigger-email config check` command, start-up included: {command:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, int(sys.argv[2]) if len(sys.argv) > 2 else 500)
