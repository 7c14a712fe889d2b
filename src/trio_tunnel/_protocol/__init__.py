"""The pure protocol core: frame codec, handshake messages, the per-stream state table and the
multiplexer state machine (:class:`Connection`). No I/O: nothing here imports trio, socket or
ssl, and time is passed in."""

from ._codes import CloseCode as CloseCode
from ._codes import ResetCode as ResetCode
from ._connection import Connection as Connection
from ._connection import Sent as Sent
from ._events import ControlReceived as ControlReceived
from ._events import CreditGranted as CreditGranted
from ._events import DataReceived as DataReceived
from ._events import EndReceived as EndReceived
from ._events import Event as Event
from ._events import FrameIgnored as FrameIgnored
from ._events import PingReceived as PingReceived
from ._events import PongReceived as PongReceived
from ._events import StreamOpened as StreamOpened
from ._events import StreamRefused as StreamRefused
from ._events import StreamWasReset as StreamWasReset
from ._flow import FRAME_COST as FRAME_COST
from ._flow import StreamFlow as StreamFlow
from ._frames import HEADER_SIZE as HEADER_SIZE
from ._frames import MAX_NAME_BYTES as MAX_NAME_BYTES
from ._frames import Frame as Frame
from ._frames import FrameType as FrameType
from ._frames import decode_frames as decode_frames
from ._frames import encode_frame as encode_frame
from ._frames import encode_header as encode_header
from ._handshake import PROTOCOL_NAME as PROTOCOL_NAME
from ._handshake import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._handshake import decode_json as decode_json
from ._handshake import encode_json as encode_json
from ._state import TRANSITIONS as TRANSITIONS
from ._state import Input as Input
from ._state import StreamState as StreamState
