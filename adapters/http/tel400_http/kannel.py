"""Kannel, the SMS gateway: sending through smsbox's sendsms, reading what smsbox sends us.

Three conversations with Kannel 1.4.5 (bearerbox + smsbox), each tried with the
real binaries (tests/test_kannel.py, docs/sms.md "The gateway: Kannel"):

* **Sending** (``KannelGateway.submit``): ``GET /cgi-bin/sendsms`` on smsbox's
  ``sendsms-port`` with ``username``, ``password``, ``from``, ``to``, ``text``
  (UTF-8, percent-encoded), ``charset=UTF-8``, ``coding=0`` (GSM 7-bit) or
  ``coding=2`` (UCS-2: anything Chinese), ``dlr-mask=31`` and a ``dlr-url``
  carrying our message id.  smsbox answers ``202 "0: Accepted for delivery"``
  (``"3: Queued for later delivery"`` when the SMSC is down: accepted too);
  ``403`` for a wrong password, ``400`` for a refused number.  smsbox splits a
  long text itself (sendsms-user ``concatenation = true``, ``max-messages``)
  into 67-character UCS-2 / 153-septet parts, as tel400.smstext counts them.
  smsbox keeps an HTTP/1.1 connection alive when the client does, so one
  ``httpx.AsyncClient`` serves every submit.
* **Incoming messages** (``parse_incoming``): the ``sms-service`` ``get-url``
  ``…/v1/sms/kannel?from=%p&to=%P&text=%b&coding=%c&charset=%C&at=%T`` with
  ``mo-recode = true`` on the smsbox: smsbox then turns a UCS-2 message into
  UTF-8 before escaping it (``coding=0&charset=UTF-8``), so the query decodes
  as UTF-8 like any other.  Without mo-recode, ``%b`` carries raw UTF-16BE
  bytes (``coding=2&charset=UTF-16BE``) that a UTF-8 query parser mangles:
  such a request is refused here rather than misread.
* **The reply** (``reply_headers``): the HTTP answer's body is the reply text
  in UTF-8; ``Content-Type: text/plain; charset=UTF-8`` tells smsbox the
  charset and ``X-Kannel-Coding: 2`` makes it send UCS-2 (without it smsbox
  converts to GSM 7-bit and Chinese becomes ``?``).  X-Kannel headers are only
  read when the sms-service has ``accept-x-kannel-headers = true``.  An empty
  body sends nothing (``omit-empty = true``).
* **Delivery reports** (``parse_dlr``): smsbox requests our ``dlr-url``
  ``…/v1/sms/dlr?id=<message id>&type=%d&at=%T``; ``%d`` is the report type,
  one of 1 delivered, 2 failed, 4 buffered, 8 accepted by the SMSC, 16 rejected
  by the SMSC.  A long (concatenated) message gets one report per type, not
  one per part.

Everything arriving from the gateway is hostile input: a missing field, a
sender that is not a number (CR/LF included), an oversized text, an unknown
report type all raise ``ValueError`` with a message naming the field, which
the endpoint answers with a 400.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping

import attrs
import httpx

from tel400.smsjobs import GatewayError, GatewayInDoubt
from tel400.smstext import OutgoingSms, encoding_of

# An address Kannel hands us or we hand it: digits, an optional leading +.
# Anything else (letters, spaces, CR/LF that could split a header or a log
# line) is refused.
_ADDRESS = re.compile(r"\+?[0-9]{1,32}")
# Our message ids, as they travel back in a dlr-url.
_MESSAGE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# The longest incoming text read: ten parts of 160 characters.  A phone
# concatenates at most a few parts; more is garbage or abuse.
MAX_INCOMING_CHARS = 1600
# Kannel's report types (the dlr-mask bits) and the delivery state each one
# means to tel400.smsstore.  4 (buffered by the SMSC) and 8 (accepted by
# the SMSC) both leave a message "submitted": the final word is 1, 2 or 16.
DLR_STATES = {1: "delivered", 2: "failed", 4: "submitted", 8: "submitted", 16: "rejected"}
# Every report type above: what each submit asks for.
DLR_MASK = 31
# httpx errors raised before a request left this process: resending is safe.
# Every other httpx error (read timeout, read/write error, a broken answer)
# may come after smsbox queued the message: it is in doubt, not refused.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
# Unix times accepted in ``at`` (2000-01-01 .. 2100-01-01): outside is garbage.
_EARLIEST, _LATEST = 946684800, 4102444800
# The charsets a text may be declared in once percent-decoded as UTF-8.
_UTF8_NAMES = frozenset({"", "utf-8", "utf8"})
_ASCII_NAMES = frozenset({"us-ascii", "ascii", "iso-8859-1", "latin1", "windows-1252"})


@attrs.frozen
class IncomingSms:
    """A message a phone sent to one of our numbers, as smsbox reported it."""

    sender: str
    to: str
    text: str
    at: float | None


@attrs.frozen
class Dlr:
    """A delivery report: ``state`` is a tel400.smsstore delivery state."""

    message_id: str
    state: str
    at: float | None


def _field(params: Mapping[str, str], name: str, *, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise ValueError(f"missing {name!r}")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is not text")
    return value


def _address(params: Mapping[str, str], name: str) -> str:
    value = _field(params, name)
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"{name!r} is not a phone number (digits, an optional leading +, at most 32)")
    return value


def _timestamp(params: Mapping[str, str], name: str) -> float | None:
    value = _field(params, name, required=False)
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or not _EARLIEST <= int(value) < _LATEST:
        raise ValueError(f"{name!r} is not a Unix time between 2000 and 2100")
    return float(value)


def parse_incoming(params: Mapping[str, str], *, max_chars: int = MAX_INCOMING_CHARS,
                   _decoded_strictly: bool = False) -> IncomingSms:
    """The message in smsbox's get-url query (``from``, ``to``, ``text``, ``coding``, ``charset``, ``at``).

    ``params`` is the query already percent-decoded as UTF-8.  Raises
    ValueError on anything that is not a well-formed message, or a text over
    ``max_chars`` characters.

    A text holding U+FFFD is refused here: a query decoded with
    ``errors="replace"`` (urllib's default) turns bytes that are not UTF-8
    (raw UCS-2 when mo-recode is off) into U+FFFD, indistinguishable from a
    U+FFFD a phone really sent.  :func:`parse_incoming_query` decodes the raw
    query strictly and so accepts a real U+FFFD: endpoints should use it.
    """
    sender = _address(params, "from")
    to = _address(params, "to")
    text = _field(params, "text")
    if len(text) > max_chars:
        raise ValueError(f"'text' is longer than {max_chars} characters")
    if "\x00" in text or ("\ufffd" in text and not _decoded_strictly):
        raise ValueError("'text' holds a NUL or bytes that are not UTF-8")
    coding = _field(params, "coding", required=False)
    if coding not in (None, "", "0", "1", "2"):
        raise ValueError("'coding' is not 0, 1 or 2")
    charset = (_field(params, "charset", required=False) or "").lower()
    if charset not in _UTF8_NAMES and not (charset in _ASCII_NAMES and text.isascii()):
        # Raw UCS-2 (mo-recode off) or a legacy charset: the bytes were
        # percent-decoded as UTF-8 already and cannot be read back.
        raise ValueError(f"'text' in charset {charset!r}: set mo-recode = true on the smsbox")
    return IncomingSms(sender=sender, to=to, text=text, at=_timestamp(params, "at"))


def parse_incoming_query(query: bytes | str, *, max_chars: int = MAX_INCOMING_CHARS) -> IncomingSms:
    """:func:`parse_incoming` of the raw get-url query string, percent-decoded strictly as UTF-8.

    Bytes that are not UTF-8 raise ValueError (nothing is replaced), so a
    U+FFFD left in the text is one the phone sent (a valid UCS-2 character)
    and is kept.  A name given twice: the last value wins, as in a dict.
    """
    if isinstance(query, bytes):
        try:
            query = query.decode("ascii")  # a query string is percent-encoded ASCII on the wire
        except UnicodeDecodeError:
            raise ValueError("the query holds raw bytes that are not ASCII") from None
    try:
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, errors="strict",
                                             max_num_fields=20))
    except UnicodeDecodeError:
        raise ValueError("'text' holds bytes that are not UTF-8: set mo-recode = true on the smsbox") from None
    return parse_incoming(params, max_chars=max_chars, _decoded_strictly=True)


def reply_headers(text: str) -> list[tuple[bytes, bytes]]:
    """The response headers that make smsbox send ``text`` (the UTF-8 body) back in the right coding."""
    coding = b"2" if encoding_of(text) == "ucs2" else b"0"
    return [(b"content-type", b"text/plain; charset=UTF-8"), (b"x-kannel-coding", coding)]


def parse_dlr(params: Mapping[str, str]) -> Dlr:
    """The delivery report in a dlr-url query (``id``, ``type``, ``at``); ValueError on garbage."""
    message_id = _field(params, "id")
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError("'id' is not a message id")
    kind = _field(params, "type")
    if not kind.isascii() or not kind.isdigit() or int(kind) not in DLR_STATES:
        raise ValueError(f"'type' is not a delivery report type ({', '.join(map(str, DLR_STATES))})")
    return Dlr(message_id=message_id, state=DLR_STATES[int(kind)], at=_timestamp(params, "at"))


def dlr_url_for(dlr_url: str, message_id: str) -> str:
    """The dlr-url handed to smsbox for one message: ours, with the id and Kannel's ``%d``/``%T`` escapes."""
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"message id {message_id!r} cannot travel in a dlr-url")
    joiner = "&" if "?" in dlr_url else "?"
    return f"{dlr_url}{joiner}id={urllib.parse.quote(message_id, safe='')}&type=%d&at=%T"


class KannelGateway:
    """tel400.smsjobs.SmsGateway over Kannel's sendsms interface.

    One keep-alive ``httpx.AsyncClient`` (``max_connections`` at once; smsbox
    answers each sendsms in well under a millisecond on loopback), with bounded
    timeouts: a gateway that does not answer within ``timeout`` seconds raises
    GatewayError and the job runner decides what to do.
    """

    def __init__(
        self,
        sendsms_url: str,
        *,
        username: str,
        password: str,
        dlr_url: str,
        smsc: str | None = None,
        timeout: float = 5.0,
        max_connections: int = 4,
    ) -> None:
        if not sendsms_url.startswith(("http://", "https://")):
            raise ValueError("sendsms_url must be an http(s) URL")
        if not dlr_url.startswith(("http://", "https://")):
            raise ValueError("dlr_url must be an http(s) URL")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        self.sendsms_url = sendsms_url
        self.dlr_url = dlr_url
        self._auth = {"username": username, "password": password}
        self._smsc = smsc
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def params_for(self, sms: OutgoingSms) -> dict[str, str]:
        """The sendsms query for one message (ValueError when an address could inject into it)."""
        for name, value in (("sender", sms.sender), ("to", sms.to)):
            if not _ADDRESS.fullmatch(value):
                raise ValueError(f"{name} {value!r} is not a phone number")
        params = {
            **self._auth,
            "from": sms.sender,
            "to": sms.to,
            "text": sms.text,
            "charset": "UTF-8",
            "coding": "2" if encoding_of(sms.text) == "ucs2" else "0",
            "dlr-mask": str(DLR_MASK),
            "dlr-url": dlr_url_for(self.dlr_url, sms.message_id),
        }
        if self._smsc is not None:
            params["smsc"] = self._smsc
        return params

    async def submit(self, sms: OutgoingSms) -> None:
        """Hand one message to smsbox; GatewayError when it refuses or cannot be reached in time."""
        params = self.params_for(sms)
        try:
            response = await self._client.get(self.sendsms_url, params=params)
        except _NEVER_SENT as exc:  # no connection, or none free: smsbox never saw the request
            raise GatewayError(f"Kannel sendsms unreachable: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:  # the request may have reached smsbox (read timeout, dropped answer)
            raise GatewayInDoubt(f"Kannel sendsms answer lost: {type(exc).__name__}") from exc
        if response.status_code != 202:
            # smsbox's answer is short text ("Authorization failed for sendsms", ...).
            raise GatewayError(f"Kannel refused {sms.message_id}: {response.status_code} {response.text[:200]!r}")

    async def aclose(self) -> None:
        """Close the kept-alive connections."""
        await self._client.aclose()

    async def __aenter__(self) -> KannelGateway:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()
