//! Python pickles, walked opcode by opcode without executing them.
//!
//! A pickle is a program for a stack machine whose `GLOBAL`, `STACK_GLOBAL`, `INST` (and
//! the copyreg `EXT*`) opcodes import arbitrary callables and whose `REDUCE`, `NEWOBJ`,
//! `OBJ` and `BUILD` opcodes call them: loading one runs whatever it imports. The walk
//! simulates the stack and memo just far enough to know every imported global (including
//! `STACK_GLOBAL` operands pushed as strings or fetched from the memo) and every called
//! value, and checks them against [`allowlist`]. It reads to the end of the stream, so a
//! second pickle after the first `STOP` is checked too, and it stops with an objection at
//! the first invalid opcode, truncation or exceeded budget: the result is never clean
//! unless the whole stream was understood.

pub mod allowlist;
mod walker;

pub use walker::{PickleScan, scan_pickle};
