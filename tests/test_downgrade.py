"""pymailsys.content.downgrade: 8-bit MIME content as 7-bit, byte for byte as Postfix.

golden/downgrade_out.eml is what Debian's Postfix 3.7 smtp client sent to smtp-sink -8
(no 8BITMIME) for golden/downgrade_in.eml (received with BODY=8BITMIME), less the
Received:, Message-Id: and Date: headers it added: multipart text, message/rfc822,
base64 and application parts, long 8-bit lines, '=' and trailing white space.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pymailsys.content import downgrade

GOLDEN = Path(__file__).parent / "golden"


def convert(message: bytes, step: int, limits: downgrade.Limits | None = None) -> bytes:
    converter = downgrade.Downgrade(limits)
    out = [converter.feed(message[i:i + step]) for i in range(0, len(message), step)]
    return b"".join(out) + converter.end()


@pytest.mark.parametrize("step", [1, 7, 100, 1 << 20])
def test_as_postfix_whatever_the_chunks(step: int) -> None:
    source = (GOLDEN / "downgrade_in.eml").read_bytes()
    assert convert(source, step) == (GOLDEN / "downgrade_out.eml").read_bytes()


def test_only_parts_declared_8bit_change() -> None:
    plain = "Subject: x\n\nno MIME, 8-bit ü\n".encode()
    assert convert(plain, 5) == plain
    declared = "Subject: x\nContent-Transfer-Encoding: 8bit\n\nü\n".encode()
    assert convert(declared, 5) == (b"Subject: x\nContent-Transfer-Encoding: quoted-printable\n"
                                    b"\n=C3=BC\n")
    # a header block that ends at a line that is not a header gets its empty line
    garbage = "Content-Transfer-Encoding: 8bit\nnot a header ü\n".encode()
    assert convert(garbage, 3) == (b"Content-Transfer-Encoding: quoted-printable\n\n"
                                   b"not a header =C3=BC\n")


def test_a_long_line_goes_in_pieces_and_a_last_line_is_ended() -> None:
    line = b"\xff" * (3 * downgrade.PIECE)
    out = convert(b"Content-Transfer-Encoding: binary\n\n" + line, 1000)
    body = out.split(b"\n\n", 1)[1]
    assert body.endswith(b"=FF\n") and body.count(b"=FF") == len(line)
    assert max(len(x) for x in body.split(b"\n")) <= 76


def test_nesting_past_the_limit_is_an_error() -> None:
    def nested(depth: int) -> bytes:
        text = "Content-Type: multipart/mixed; boundary=b0\n\n"
        for i in range(depth):
            text += f"--b{i}\nContent-Type: multipart/mixed; boundary=b{i + 1}\n\n"
        return (text + f"--b{depth}\nContent-Transfer-Encoding: 8bit\n\nü\n").encode()

    limits = downgrade.Limits(nesting=3)
    assert b"=C3=BC" in convert(nested(4), 50, limits)  # five multiparts: as Postfix, fine
    with pytest.raises(downgrade.MimeError) as caught:
        convert(nested(5), 50, limits)
    assert (caught.value.dsn, caught.value.text) == ("5.6.0", "MIME nesting exceeds safety limit")
