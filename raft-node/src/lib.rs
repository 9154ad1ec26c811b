//! The node binary that wires the layers together and serves clients. Not yet implemented (issue 6).
