"""The pure protocol core: frame codec, handshake messages and per-stream flow state. No I/O."""

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
