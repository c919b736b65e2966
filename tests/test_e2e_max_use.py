"""End to end: max_use, as main.cf sets it and as a master.cf ``-o`` overrides it.

Postfix's delivery agents exit after max_use deliveries (its qmgr connects once per
delivery); pymailsys's qmgr keeps its connection to local and virtual open, so they
count the deliveries they answered: with max_use 2, no local or virtual process
delivers more than two, and every message still arrives once.
"""

from __future__ import annotations

import re
from collections import Counter

from harness import ME, Instance
from test_e2e_virtual import _maildir_files, _virtual


def _deliveries_per_process(inst: Instance, program: str, count: int) -> Counter[str]:
    lines = inst.wait_log(rf"postfix/{program}\[\d+\]: \w+: to=<[^>]*>, .*status=sent",
                          count=count)
    return Counter(re.search(rf"postfix/{program}\[(\d+)\]", line).group(1)  # type: ignore[union-attr]
                   for line in lines)


def test_local_exits_after_max_use_deliveries(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(max_use="2")
    inst.start()
    for n in range(5):
        inst.send("sender@example.org", f"{ME}@localhost", f"Subject: {n}\r\n\r\nhi\r\n")
    assert len(inst.wait_maildir(5)) == 5
    per_process = _deliveries_per_process(inst, "local", 5)
    assert sum(per_process.values()) == 5
    assert max(per_process.values()) <= 2, per_process
    assert len(per_process) >= 3, per_process


def test_virtual_obeys_a_master_cf_max_use(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, base = _virtual(new_instance)
    inst.postfix("stop")
    master_cf = inst.config_dir / "master.cf"
    text = master_cf.read_text()
    line = next(line for line in text.splitlines() if line.startswith("virtual "))
    master_cf.write_text(text.replace(line, line + "\n  -o max_use=2"))
    inst.start()
    for n in range(5):
        inst.send("carol@example.org", "alice@example.com", f"Subject: {n}\r\n\r\nhi\r\n")
    per_process = _deliveries_per_process(inst, "virtual", 5)
    assert len(_maildir_files(base / "example.com" / "alice")) == 5
    assert max(per_process.values()) <= 2, per_process
    assert len(per_process) >= 3, per_process


def test_a_max_use_that_a_long_lived_daemon_ignores_is_a_warning(new_instance) -> None:  # type: ignore[no-untyped-def]
    """smtpd and cleanup serve their clients in long-lived processes that do not count
    max_use: postfix check says so for main.cf's max_use and for a master.cf ``-o``."""
    inst: Instance = new_instance()
    inst.set(max_use="50")
    master_cf = inst.config_dir / "master.cf"
    text = master_cf.read_text()
    line = next(line for line in text.splitlines() if line.startswith(f"127.0.0.1:{inst.port} "))
    master_cf.write_text(text.replace(line, line + "\n  -o max_use=10"))
    number = text.splitlines().index(line) + 1
    main_line = (inst.config_dir / "main.cf").read_text().splitlines().index("max_use = 50") + 1
    result = inst.postfix("check")
    assert (f"postfix/postfix-script: warning: {inst.config_dir}/main.cf, line {main_line}: "
            "parameter max_use: smtpd, cleanup, pickup, bounce, smtp, lmtp, flush, showq, "
            "spawn serve their clients in long-lived processes that do not count it: "
            "ignored there\n") in result.stderr, result.stderr
    assert (f"postfix/postfix-script: warning: file {master_cf}: line {number}: parameter "
            "max_use: smtpd serves its clients in one long-lived process that does not "
            "count it: ignored\n") in result.stderr, result.stderr


def test_a_scheduler_setting_on_a_delivery_agent_is_a_warning(new_instance) -> None:  # type: ignore[no-untyped-def]
    """relay_destination_concurrency_limit is qmgr's (as in Postfix): given with ``-o`` to
    the relay service it never reaches qmgr, and postfix check says so; in main.cf
    it is taken without a word."""
    inst: Instance = new_instance()
    inst.set(relay_destination_concurrency_limit="5")
    master_cf = inst.config_dir / "master.cf"
    text = master_cf.read_text()
    line = next(line for line in text.splitlines() if line.startswith("relay "))
    master_cf.write_text(text.replace(line, line + "\n  -o relay_destination_concurrency_limit=2"
                                              "\n  -o default_destination_rate_delay=1s"))
    number = text.splitlines().index(line) + 1
    result = inst.postfix("check")
    where = f"postfix/postfix-script: warning: file {master_cf}: line {number}: parameter"
    assert (f"{where} relay_destination_concurrency_limit: qmgr's, not smtp's: ignored here "
            "(set it in main.cf)\n") in result.stderr, result.stderr
    assert (f"{where} default_destination_rate_delay: qmgr's, not smtp's: ignored here "
            "(set it in main.cf)\n") in result.stderr, result.stderr
    assert "main.cf" not in result.stderr.replace("(set it in main.cf)", ""), result.stderr
