"""access(5) actions decided by smtpd_end_of_data_restrictions, end to end, for a small
message (handed to cleanup in one request at the end of DATA) and for a large one
(streamed to cleanup while DATA arrives, its envelope sent before the end of data):
HOLD holds it, DISCARD drops it, REDIRECT and BCC change its recipients, either way;
an action decided at RCPT, which the streamed envelope already carries, is not applied
twice.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import ME, Instance

SIZES = {"small": 1_000, "large": 200_000}  # large: over smtpd's STREAM_AT (64 KB)


@pytest.fixture(scope="module")
def inst() -> Iterator[Instance]:
    inst = Instance()
    table = inst.write("etc/eod", f"""\
hold@example.org HOLD
discard@example.org DISCARD
redirect@example.org REDIRECT {ME}+target@localhost
bcc@example.org BCC {ME}+copy@localhost
""")
    rcpt_table = inst.write("etc/rcpt", f"{ME}+rbcc@localhost BCC {ME}+copy2@localhost\n")
    inst.set(recipient_delimiter="+",
             smtpd_recipient_restrictions=f"check_recipient_access texthash:{rcpt_table}, "
             "permit_mynetworks, reject_unauth_destination",
             smtpd_end_of_data_restrictions=f"check_sender_access texthash:{table}")
    inst.start()
    yield inst
    inst.cleanup()


def _message(subject: str, size: int) -> str:
    line = "x" * 76 + "\r\n"
    return f"Subject: {subject}\r\n\r\n" + line * (size // len(line) + 1)


@pytest.mark.parametrize("size", SIZES)
def test_hold(inst: Instance, size: str) -> None:
    queue_id = inst.send("hold@example.org", f"{ME}@localhost", _message(f"hold {size}",
                                                                         SIZES[size]))
    inst.wait_log(r"NOQUEUE: hold: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: "
                  r"<hold@example\.org>: Sender address triggers HOLD action")
    inst.wait_log(rf"{queue_id}: client=localhost")
    assert queue_id in inst.queue_ids("hold")
    assert f"{queue_id}: to=" not in inst.log()


@pytest.mark.parametrize("size", SIZES)
def test_discard(inst: Instance, size: str) -> None:
    queue_id = inst.send("discard@example.org", f"{ME}@localhost",
                         _message(f"discard {size}", SIZES[size]))
    inst.wait_log(rf"{queue_id}: client=localhost")
    assert not any(queue_id in inst.queue_ids(q) for q in ("incoming", "active", "deferred",
                                                           "hold"))
    assert f"{queue_id}: to=" not in inst.log()


@pytest.mark.parametrize("size", SIZES)
def test_redirect(inst: Instance, size: str) -> None:
    queue_id = inst.send("redirect@example.org", f"{ME}@localhost",
                         _message(f"redirect {size}", SIZES[size]))
    inst.wait_log(rf"{queue_id}: to=<{ME}\+target@localhost>, orig_to=<{ME}@localhost>, "
                  r".*status=sent")
    assert f"{queue_id}: to=<{ME}@localhost>" not in inst.log()


@pytest.mark.parametrize("size", SIZES)
def test_bcc(inst: Instance, size: str) -> None:
    queue_id = inst.send("bcc@example.org", f"{ME}@localhost", _message(f"bcc {size}",
                                                                       SIZES[size]))
    inst.wait_log(rf"{queue_id}: to=<{ME}\+copy@localhost>, .*status=sent")
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>, .*status=sent")


@pytest.mark.parametrize("size", SIZES)
def test_an_action_decided_at_rcpt_is_applied_once(inst: Instance, size: str) -> None:
    queue_id = inst.send("plain@example.org", f"{ME}+rbcc@localhost",
                         _message(f"rbcc {size}", SIZES[size]))
    inst.wait_log(rf"{queue_id}: to=<{ME}\+rbcc@localhost>, .*status=sent")
    inst.wait_log(rf"{queue_id}: to=<{ME}\+copy2@localhost>, .*status=sent")
    inst.wait_log(rf"{queue_id}: removed")
    assert inst.log().count(f"{queue_id}: to=<{ME}+copy2@localhost>") == 1
