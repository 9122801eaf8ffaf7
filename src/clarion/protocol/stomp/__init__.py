"""STOMP 1.0/1.1/1.2 for clarion, without I/O: the frame codec and the session state machine.

* :mod:`.frame` — frames as values, header escaping, serialisation;
* :mod:`.parser` — the incremental, bounded frame parser;
* :mod:`.negotiation` — versions, WebSocket subprotocols, heart-beats;
* :mod:`.states` — the session's states and transitions, as tables;
* :mod:`.session` — :class:`StompSession`: bytes in, checked events and frames out;
* :mod:`.acks` — acknowledgements as stream positions;
* :mod:`.message` — ``MESSAGE`` frames split into a per-subscription prefix and a shared tail.
"""

from clarion.protocol.stomp.acks import ACK_MODES, AckMode, AckPosition
from clarion.protocol.stomp.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    StompProtocolError,
)
from clarion.protocol.stomp.events import (
    Abort,
    Ack,
    Begin,
    Commit,
    Connect,
    Disconnect,
    Event,
    Send,
    StompSubscription,
    Subscribe,
    Unsubscribe,
)
from clarion.protocol.stomp.frame import Frame, escape, serialise, unescape
from clarion.protocol.stomp.message import (
    message_body,
    message_prefix,
    message_tail,
    reset_frame,
)
from clarion.protocol.stomp.negotiation import (
    SUBPROTOCOLS,
    VERSIONS,
    HeartBeat,
    negotiate_heart_beat,
    negotiate_version,
    select_subprotocol,
)
from clarion.protocol.stomp.parser import FrameParser
from clarion.protocol.stomp.session import StompSession, acked_cursor
from clarion.protocol.stomp.states import State

__all__ = [
    "ACK_MODES",
    "SUBPROTOCOLS",
    "VERSIONS",
    "Abort",
    "Ack",
    "AckMode",
    "AckPosition",
    "Begin",
    "Commit",
    "Connect",
    "Disconnect",
    "Event",
    "Frame",
    "FrameParser",
    "HeartBeat",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Send",
    "State",
    "StompProtocolError",
    "StompSession",
    "StompSubscription",
    "Subscribe",
    "Unsubscribe",
    "acked_cursor",
    "escape",
    "message_body",
    "message_prefix",
    "message_tail",
    "negotiate_heart_beat",
    "negotiate_version",
    "reset_frame",
    "select_subprotocol",
    "serialise",
    "unescape",
]
