"""Numbers in queue files are plain decimal digits: anything else makes the file corrupt.

A T record of ``nan`` or ``inf`` (or a sign, an exponent, ``_``) once reached
local and bounce as a float they could not use. The readers now refuse such a
file with QueueFileError; qmgr moves it to corrupt/ with Postfix's warning, and
other mail keeps flowing.
"""

from __future__ import annotations

import os
import re

import pytest
from harness import ME, Instance
from qf_helpers import queue_file

from pymailsys.queue import records as r
from pymailsys.queue.queue_file import QueueFileBuilder, QueueFileError, read_envelope_bytes

GOOD_TIME = b"1795594109 500000"


def _file(time_payload: bytes = GOOD_TIME, notify: str = "", warn: bytes = b"") -> bytes:
    b = QueueFileBuilder(1795594109.5)
    b.sender("alice@example.org")
    b.recipient("bob@example.org")
    b.line(b"Subject: x")
    data = b.build()
    old = r.encode_record(r.REC_TYPE_TIME, GOOD_TIME)
    assert data.count(old) == 1
    extra = b""
    if notify:
        extra += r.encode_record(r.REC_TYPE_ATTR, f"notify_flags={notify}".encode())
    if warn:
        extra += r.encode_record(r.REC_TYPE_WARN, warn)
    new = r.encode_record(r.REC_TYPE_TIME, time_payload) + extra
    data = data.replace(old, new)
    # keep the C record's data offset right after the change of length
    sizes = r.parse_size_record(r.decode_record(data, 0)[1])
    shifted = r.message_size_record(sizes[0], sizes[1] + len(new) - len(old), *sizes[2:])
    return shifted + data[len(shifted):]


def test_a_good_file_reads():
    env = read_envelope_bytes(_file(b"1795594109 500000", notify="2", warn=b"1795600000"))
    assert env.arrival == 1795594109.5
    assert env.recipients[0].notify == 2
    assert env.warn_time == 1795600000


@pytest.mark.parametrize("payload", [
    b"nan", b"nan 0", b"inf", b"-inf 0", b"1e9 0", b"-5 0", b"+5 0", b"1_000 0", b"12.5",
    b"1795594109 1000000", b"1795594109 -1", b"", b"1 2 3", b"99999999999999999999999 0",
    "\u0661\u0662".encode(),
])
def test_a_bad_time_record_is_corrupt(payload):
    with pytest.raises(QueueFileError):
        read_envelope_bytes(_file(payload))


@pytest.mark.parametrize("notify, warn", [("nan", b""), ("\u00b2", b""), ("", b"inf"), ("", b"-1")])
def test_other_bad_numbers_are_corrupt(notify, warn):
    with pytest.raises(QueueFileError):
        read_envelope_bytes(_file(notify=notify, warn=warn))


def test_a_bad_size_record_is_corrupt():
    data = _file()
    payload = r.decode_record(data, 0)[1]
    bad = r.encode_record(r.REC_TYPE_SIZE, payload.replace(b" 0", b"-0", 1))
    with pytest.raises(QueueFileError):
        read_envelope_bytes(bad + data[len(bad):])


def test_nan_arrival_in_incoming_goes_to_corrupt_and_mail_keeps_flowing(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.start()
    queue_id = queue_file(inst.queue_dir, "incoming", "alice@example.org", [f"{ME}@localhost"],
                          [b"Subject: nan"], arrival=1795594109.5)
    path = inst.queue_dir / "incoming" / queue_id
    data = path.read_bytes()
    # the same length, so the C record's offsets stay right: only the time is bad
    path.write_bytes(data.replace(r.encode_record(r.REC_TYPE_TIME, GOOD_TIME),
                                  r.encode_record(r.REC_TYPE_TIME, b"nan".ljust(len(GOOD_TIME)))))
    owner = os.stat(inst.queue_dir / "incoming")
    os.chown(path, owner.st_uid, owner.st_gid)
    inst.postfix("flush")  # qmgr scans incoming/
    good = inst.send("sender@example.org", f"{ME}@localhost", b"Subject: good\r\n\r\nfine\r\n")
    inst.wait_log(rf'warning: saving corrupt file "{queue_id}" from queue "active" to queue "corrupt"')
    assert (inst.queue_dir / "corrupt" / queue_id).exists()
    inst.wait_log(rf"{good}: to=<{ME}@localhost>.*status=sent")
    (delivered,) = inst.wait_maildir(1)
    assert b"Subject: good" in delivered
    later = inst.send("sender@example.org", f"{ME}@localhost", b"Subject: later\r\n\r\nfine\r\n")
    inst.wait_log(rf"{later}: to=<{ME}@localhost>.*status=sent")
    log = inst.log()
    assert "Traceback" not in log
    assert not re.search(rf"{queue_id}: to=", log)
