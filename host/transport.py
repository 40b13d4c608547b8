"""Open the byte link to a spine board: a serial port, a TCP socket or a loopback.

Everything goes through :func:`serial.serial_for_url`, so the same driver code talks to

* a USB-serial port: ``/dev/ttyUSB1``, ``COM3``;
* the simulated board of :mod:`hdl.sim`: ``socket://127.0.0.1:PORT``;
* pyserial's loopback ``loop://`` (echoes every byte; for experiments).

A *transport* is any object with pyserial's ``write(bytes)``, ``read(n)`` (up to ``n`` bytes,
waiting at most ``timeout`` seconds), a writable ``timeout`` attribute,
``reset_input_buffer()`` and ``close()``; tests pass their own.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass

from .driver_errors import DeviceError, LinkError
from .protocol import (
    HEADER_BYTES,
    MAX_PAYLOAD,
    RESPONSE_SYNC,
    Command,
    Frame,
    ResponseParser,
    Status,
    pack_request,
)

__all__ = ["LIST_PORTS_HINT", "RETRY_STATUSES", "FrameLink", "LinkStats", "open_link"]

LIST_PORTS_HINT = "list the serial ports with `python -m serial.tools.list_ports`"


def open_link(url: str, *, baud: int, timeout: float):
    """Open ``url`` with pyserial and return the port object.

    Parameters
    ----------
    url : str
        Device path (``/dev/ttyUSB1``) or pyserial URL (``socket://host:port``, ``loop://``).
    baud : int
        Baud rate (ignored by ``socket://`` and ``loop://``).
    timeout : float
        Read timeout in seconds of one ``read`` call.

    Raises
    ------
    LinkError
        If the port cannot be opened; the message names the port, the reason and how to list
        the available ports (or, for ``socket://``, how to start the simulated board).
    """
    import serial

    if not isinstance(url, str) or not url:
        raise LinkError(f"no port given (got {url!r}): pass a device such as /dev/ttyUSB1, "
                        f"or socket://127.0.0.1:PORT for the simulated board; {LIST_PORTS_HINT}")
    if not isinstance(baud, int) or baud <= 0:
        raise LinkError(f"baud rate must be a positive integer, not {baud!r}")
    try:
        return serial.serial_for_url(url, baudrate=baud, timeout=timeout, write_timeout=None)
    except (serial.SerialException, ValueError, OSError) as error:
        if url.startswith("socket://"):
            hint = ("is the simulated board running? Start it with `python -m hdl.sim "
                    "--board icebreaker --listen HOST:PORT` (or use `python -m host.run --sim`)")
        else:
            hint = (f"check the cable and the device name, that you may open it (Linux: be in "
                    f"the `dialout` group), and that no other program holds it; "
                    f"{LIST_PORTS_HINT}")
        raise LinkError(f"cannot open port {url!r} at {baud} baud: {error}; {hint}") from None


# ------------------------------------------------------------------------------------------------
# Framed requests with sequence numbers, retries and pipelining


#: Statuses that mean "the request did not arrive intact": the request is sent again.
#: BAD_LENGTH is among them because the device answers it straight from a damaged header
#: (length > MAX_PAYLOAD) before any CRC check; if it persists it is reported as a DeviceError.
RETRY_STATUSES = (Status.BAD_CRC, Status.TIMEOUT, Status.BAD_LENGTH)
#: Seconds to wait before re-sending a request answered BUSY.
BUSY_BACKOFF = 0.01


def _name(enum, code: int) -> str:
    try:
        return enum(code).name
    except ValueError:
        return f"0x{code:02X}"


@dataclass
class LinkStats:
    """Counters of one link (see :attr:`FrameLink.stats`).

    Attributes
    ----------
    requests : int
        Request frames sent, retries included.
    responses : int
        Valid response frames matched to an outstanding request.
    retries : int
        Requests sent again (after a BAD_CRC/TIMEOUT/BUSY answer, a lost answer or a stall).
    device_bad_crc : int
        Answers BAD_CRC or TIMEOUT: the device got a damaged or truncated request.
    bad_crc : int
        Response frames that failed their CRC (dropped, never returned).
    skipped_bytes : int
        Received bytes outside any frame (line noise, a previous session's leftovers).
    stale : int
        Valid responses whose seq matched no outstanding request (answers to requests that had
        already been re-sent); dropped.
    stalls : int
        Times no answer came within the timeout.
    window_drops : int
        Times the link fell back to one request in flight because requests were damaged while
        several were in flight (the device's receive FIFO overflowed).
    bytes_out, bytes_in : int
        Bytes written and read.
    """

    requests: int = 0
    responses: int = 0
    retries: int = 0
    device_bad_crc: int = 0
    bad_crc: int = 0
    skipped_bytes: int = 0
    stale: int = 0
    stalls: int = 0
    window_drops: int = 0
    bytes_out: int = 0
    bytes_in: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Pending:
    index: int
    command: int
    payload: bytes
    tag: object
    attempts: int = 0
    seq: int = -1
    sent: float = 0.0


class FrameLink:
    """Request/response frames over a byte transport, matched by ``seq``.

    Every attempt of a request gets a fresh ``seq``, so an answer that arrives after its request
    was re-sent is recognised as stale and dropped: a result is never returned twice.  The
    device answers requests in order, so an answer to a later request means every earlier
    outstanding request (or its answer) was lost; those are re-sent at once.  When nothing
    arrives for ``timeout`` seconds, every outstanding request is re-sent.  A request is sent at
    most ``1 + retries`` times, then :class:`LinkError` is raised.

    Pipelining needs the device to buffer the requests that arrive while it executes and
    answers one (its receive FIFO).  When requests get damaged while several are in flight
    (BAD_CRC, TIMEOUT, BAD_LENGTH answers or lost answers), the link falls back to one request
    in flight for good (:attr:`window_limit`, counted in ``stats.window_drops``), so a board
    with a small FIFO still works, at the unpipelined rate.

    Parameters
    ----------
    port : transport
        pyserial-like object (see the module docstring).
    name : str
        The port's name, for messages.
    timeout : float
        Seconds of silence after which outstanding requests count as lost.
    retries : int
        Extra attempts per request.
    poll : float
        ``read`` timeout of one poll of the port (seconds).
    """

    def __init__(self, port, *, name: str = "link", timeout: float = 1.0, retries: int = 3,
                 poll: float = 0.05):
        if not timeout > 0:
            raise ValueError(f"`timeout` must be positive seconds, not {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"`retries` must be an integer >= 0, not {retries!r}")
        self.port = port
        self.name = name
        self.timeout = float(timeout)
        self.retries = retries
        self.stats = LinkStats()
        self._parser = ResponseParser(RESPONSE_SYNC)
        self._frames: deque[Frame] = deque()
        self._next_seq = 0
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._retry: deque[_Pending] = deque()
        self._open = False
        #: Most requests kept in flight; drops to 1 for good when requests get damaged while
        #: several are in flight (see :meth:`pipeline`).
        self.window_limit = 128
        with contextlib.suppress(AttributeError, ValueError):
            port.timeout = min(poll, self.timeout)

    # --- bytes ---------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except OSError as error:  # pyserial's SerialException and socket errors
            raise LinkError(f"writing to {self.name} failed: {error}; the port was closed or "
                            f"the cable unplugged (simulated board: was it stopped?)") from None
        self.stats.bytes_out += len(data)

    def _wanted(self) -> int:
        """Bytes the parser needs to finish its current frame (at least 1)."""
        buf = self._parser.buffer
        start = buf.find(bytes([RESPONSE_SYNC]))
        if start < 0:
            return 1
        have = len(buf) - start
        if have < HEADER_BYTES:
            return HEADER_BYTES - have
        length = int.from_bytes(buf[start + 3:start + 5], "little")
        if length > MAX_PAYLOAD:
            return 1
        return max(1, HEADER_BYTES + length + 2 - have)

    def _receive(self, deadline: float) -> Frame | None:
        """The next valid response frame, or None when ``deadline`` passes first."""
        while not self._frames:
            try:
                data = self.port.read(self._wanted())
            except OSError as error:
                raise LinkError(f"reading from {self.name} failed: {error}; the port was "
                                f"closed or the cable unplugged (simulated board: was it "
                                f"stopped?)") from None
            if data:
                self.stats.bytes_in += len(data)
                self._parser.feed(data)
                self._frames.extend(self._parser.frames())
                self.stats.bad_crc = self._parser.bad_crc
                self.stats.skipped_bytes = self._parser.skipped
            if not self._frames and time.monotonic() >= deadline:
                return None   # silence, or only garbage, until the deadline
        return self._frames.popleft()

    # --- requests ------------------------------------------------------------------------------

    def _send(self, p: _Pending) -> None:
        seq = self._next_seq
        while seq in self._pending:
            seq = (seq + 1) & 0xFF
        self._next_seq = (seq + 1) & 0xFF
        p.seq, p.attempts, p.sent = seq, p.attempts + 1, time.monotonic()
        self._pending[seq] = p
        self.stats.requests += 1
        self._write(pack_request(p.command, seq, p.payload))

    def _degrade(self, in_flight: int) -> None:
        """Requests were damaged while ``in_flight`` were outstanding: if that was more than
        one, keep one in flight from now on (the device could not buffer them)."""
        if in_flight > 1 and self.window_limit > 1:
            self.window_limit = 1
            self.stats.window_drops += 1

    def _resend(self, p: _Pending, reason: str, status: int | None = None) -> None:
        if p.attempts > self.retries:
            self._pending.clear()
            self._retry.clear()
            if status == Status.BAD_LENGTH:
                raise DeviceError(
                    f"{self.name}: the device refused {_name(Command, p.command)} (request "
                    f"#{p.index}, {len(p.payload)} payload bytes) with status BAD_LENGTH "
                    f"{p.attempts} times{_status_hint(status)}", status, p.command)
            raise LinkError(
                f"{_name(Command, p.command)} request #{p.index} on {self.name} failed "
                f"{p.attempts} times (last: {reason}); the link is unreliable or the device is "
                f"not answering: check the cable, the baud rate and that the board runs a spine "
                f"bitstream, then retry with a larger timeout or more retries; "
                f"link counters: {self.stats.as_dict()}")
        self.stats.retries += 1
        self._retry.append(p)   # sent again by the pipeline loop, within the window

    def _handle(self, frame: Frame, done: dict) -> None:
        p = self._pending.get(frame.seq)
        if p is None:
            self.stats.stale += 1
            return
        in_flight = len(self._pending)
        # Answers come in request order: everything sent before this request was lost.
        for seq in list(self._pending):
            if seq == frame.seq:
                break
            self._degrade(in_flight)
            self._resend(self._pending.pop(seq), "its answer was lost (a later request was "
                         "answered first)")
        del self._pending[frame.seq]
        self.stats.responses += 1
        status = frame.code
        if status == Status.OK:
            done[p.index] = (p.tag, frame)
        elif status in RETRY_STATUSES:
            self.stats.device_bad_crc += 1
            self._degrade(in_flight)
            self._resend(p, f"the device answered {_name(Status, status)}", status)
        elif status == Status.BUSY:
            time.sleep(BUSY_BACKOFF)
            self._resend(p, "the device answered BUSY")
        else:
            self._pending.clear()
            self._retry.clear()
            raise DeviceError(
                f"{self.name}: the device refused {_name(Command, p.command)} (request "
                f"#{p.index}, {len(p.payload)} payload bytes) with status "
                f"{_name(Status, status)}{_status_hint(status)}", status, p.command)

    def pipeline(self, requests, window: int = 1):
        """Send ``requests`` with up to ``window`` outstanding; yield ``(tag, frame)`` of each in
        request order.

        Parameters
        ----------
        requests : iterable of (command, payload, tag)
        window : int
            Requests in flight at once (1 = one at a time).

        Yields
        ------
        (tag, Frame)
            The OK answer of every request, in the order of ``requests``.

        Raises
        ------
        DeviceError
            A request was refused (an error status other than BAD_CRC, TIMEOUT, BUSY).
        LinkError
            A request got no valid answer after all retries.
        """
        if not isinstance(window, int) or not 1 <= window <= 128:
            raise ValueError(f"`window` must be an integer from 1 to 128, not {window!r}")
        if self._open:
            raise RuntimeError(f"{self.name}: another request stream is still open on this "
                               f"link; finish iterating it (or close() it) first")
        self._open = True
        self._pending.clear()  # leftovers of an abandoned pipeline answer as stale
        self._retry.clear()
        try:
            yield from self._run(iter(requests), window)
        finally:
            self._open = False

    def _run(self, source, window: int):
        exhausted = False
        index = 0
        next_out = 0
        done: dict[int, tuple] = {}
        while True:
            while len(self._pending) < min(window, self.window_limit):
                if self._retry:
                    self._send(self._retry.popleft())
                    continue
                if exhausted:
                    break
                try:
                    command, payload, tag = next(source)
                except StopIteration:
                    exhausted = True
                    break
                self._send(_Pending(index, int(command), bytes(payload), tag))
                index += 1
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            if exhausted and not self._pending and not self._retry:
                if next_out == index:
                    return
                continue
            frame = self._receive(time.monotonic() + self.timeout)
            if frame is None:
                self.stats.stalls += 1
                self._degrade(len(self._pending))
                for seq in list(self._pending):
                    self._resend(self._pending.pop(seq),
                                 f"no answer within {self.timeout:g} s")
            else:
                self._handle(frame, done)

    def request(self, command: int, payload: bytes = b"") -> bytes:
        """Send one request and return the payload of its OK answer (see :meth:`pipeline`)."""
        answers = self.pipeline([(command, payload, None)], 1)
        try:
            return next(answers)[1].payload
        finally:
            answers.close()


def _status_hint(status: int) -> str:
    return {
        Status.BAD_LENGTH: ": the payload length is wrong for the command (driver and "
                           "bitstream speak different protocol versions?)",
        Status.UNKNOWN_COMMAND: ": the bitstream does not know this command (update it)",
        Status.BAD_ADDRESS: ": region, index or address outside the device memory (the model "
                            "does not fit this bitstream)",
        Status.NOT_LOADED: ": load a model first (Accelerator.load or `--model`)",
    }.get(status, "")
