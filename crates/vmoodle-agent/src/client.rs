//! The control node's client of an agent (filled in next).
