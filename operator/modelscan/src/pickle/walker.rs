//! The opcode walk: every opcode of protocols 0–5 with its stack effect, enough to know
//! which globals a pickle imports and which values it calls, without executing anything.

use std::{
    collections::{BTreeSet, HashMap},
    io::Read,
    rc::Rc,
    time::Instant,
};

use super::allowlist::{self, Classification};
use crate::{
    FindingKind, Issue, ScanLimits,
    report::MAX_FINDINGS_PER_FILE,
    stream::{Input, ReadError},
};

/// Longest string the walk keeps as a possible `STACK_GLOBAL` operand; longer strings are
/// skipped, and a `STACK_GLOBAL` on one is unresolved (every allowed name is far shorter).
const MAX_KEPT_STRING: u64 = 256;
/// Longest text operand (protocol 0 lines).
const MAX_LINE: usize = 64 << 10;
/// Most distinct globals recorded for the report.
const MAX_GLOBALS: usize = 1024;
/// Opcodes between two looks at the clock.
const CLOCK_EVERY: u64 = 4096;

/// What the walk of one pickle stream found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PickleScan {
    /// Every global imported, `module.name`, sorted.
    pub globals: BTreeSet<String>,
    /// Objections, with the byte offset of the opcode.
    pub issues: Vec<Issue>,
    /// Complete pickles walked (a stream may hold several, one after the other).
    pub pickles: u32,
    /// Opcodes walked.
    pub opcodes: u64,
}

/// Walks every pickle in `reader` until the end of the stream, checking each imported
/// global against [`allowlist`](super::allowlist). Never fails: an unreadable, truncated or
/// invalid stream, or one over a budget of `limits`, ends the walk with an issue, so the
/// result is never clean by accident.
pub fn scan_pickle<R: Read>(reader: R, limits: &ScanLimits) -> PickleScan {
    let mut w = Walker {
        input: Input::new(reader),
        limits,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        retained: 0,
        started: Instant::now(),
        dropped: 0,
        scan: PickleScan::default(),
    };
    loop {
        let start = w.input.pos();
        if let Err(stop) = w.one_pickle() {
            let issue = stop.into_issue(start, w.scan.pickles);
            w.issue(issue);
            break;
        }
        w.scan.pickles += 1;
        match w.input.at_eof() {
            Ok(true) => break,
            // Another pickle follows (legacy torch.save writes several); a loader reads
            // them all, so the scan does too, each with a fresh memo.
            Ok(false) => {
                w.stack.clear();
                w.marks.clear();
                w.memo.clear();
            }
            Err(e) => {
                let at = w.input.pos();
                w.issue(Issue::new(
                    FindingKind::Malformed,
                    Some(at),
                    format!("read error: {e}"),
                ));
                break;
            }
        }
    }
    if w.dropped > 0 {
        let dropped = w.dropped;
        w.scan.issues.push(Issue::new(
            FindingKind::ForbiddenGlobal,
            None,
            format!("{dropped} more objections in this pickle not listed"),
        ));
    }
    w.scan
}

/// A value on the simulated stack: only what import resolution needs.
#[derive(Clone, Debug)]
enum Val {
    /// A short string: a possible `STACK_GLOBAL` operand.
    Str(Rc<str>),
    /// A global the pickle imported, `module.name`.
    Global(Rc<str>),
    /// Anything else (numbers, containers, call results, long strings).
    Other,
}

/// Why the walk of a stream stopped early.
enum Stop {
    Truncated(u64, &'static str),
    Malformed(u64, String),
    Limit(u64, String),
    Io(u64, std::io::Error),
}

impl Stop {
    fn into_issue(self, pickle_start: u64, complete_before: u32) -> Issue {
        // After one complete pickle, say where the bad one starts: legacy torch.save
        // files put raw tensor bytes after their pickles, and that is what readers see.
        let context = if complete_before > 0 {
            format!(" (in the data after pickle {complete_before}, from offset {pickle_start})")
        } else {
            String::new()
        };
        match self {
            Self::Truncated(at, what) => Issue::new(
                FindingKind::Malformed,
                Some(at),
                format!("truncated pickle: {what}{context}"),
            ),
            Self::Malformed(at, msg) => Issue::new(
                FindingKind::Malformed,
                Some(at),
                format!("invalid pickle: {msg}{context}"),
            ),
            Self::Limit(at, msg) => Issue::new(
                FindingKind::LimitExceeded,
                Some(at),
                format!("{msg}; the rest of the pickle was not checked"),
            ),
            Self::Io(at, e) => Issue::new(
                FindingKind::NotScanned,
                Some(at),
                format!("read error: {e}"),
            ),
        }
    }
}

type Step = Result<(), Stop>;

struct Walker<'l, R> {
    input: Input<R>,
    limits: &'l ScanLimits,
    stack: Vec<Val>,
    /// Stack lengths at each MARK (the unpickler's metastack).
    marks: Vec<usize>,
    memo: HashMap<u64, Val>,
    retained: u64,
    started: Instant,
    dropped: u64,
    scan: PickleScan,
}

impl<R: Read> Walker<'_, R> {
    fn issue(&mut self, issue: Issue) {
        if self.scan.issues.len() < MAX_FINDINGS_PER_FILE {
            self.scan.issues.push(issue);
        } else {
            self.dropped += 1;
        }
    }

    fn read_err(&self, at: u64, e: ReadError, what: &'static str) -> Stop {
        match e {
            ReadError::Eof => Stop::Truncated(at, what),
            ReadError::LineTooLong(max) => {
                Stop::Malformed(at, format!("text operand longer than {max} bytes"))
            }
            ReadError::Io(e) => Stop::Io(at, e),
        }
    }

    fn arr<const N: usize>(&mut self, at: u64) -> Result<[u8; N], Stop> {
        self.input
            .array::<N>()
            .map_err(|e| self.read_err(at, e, "the stream ends inside an operand"))
    }

    fn line(&mut self, at: u64) -> Result<Vec<u8>, Stop> {
        self.input
            .line(MAX_LINE)
            .map_err(|e| self.read_err(at, e, "the stream ends inside a text operand"))
    }

    fn skip(&mut self, at: u64, n: u64) -> Step {
        self.input
            .skip(n)
            .map_err(|e| self.read_err(at, e, "the stream ends inside a payload"))
    }

    /// Reads a length-prefixed string payload: kept when short enough to be an import
    /// operand, skipped otherwise.
    fn string(&mut self, at: u64, len: u64, unicode: bool) -> Result<Val, Stop> {
        if len > MAX_KEPT_STRING {
            self.skip(at, len)?;
            return Ok(Val::Other);
        }
        let bytes = self
            .input
            .bytes(len as usize)
            .map_err(|e| self.read_err(at, e, "the stream ends inside a string"))?;
        // Python decodes BINUNICODE as UTF-8 and py2 strings as ASCII (or latin-1/UTF-8
        // under torch's encoding); only text that decodes the same every way is kept.
        let text = match String::from_utf8(bytes) {
            Ok(s) if unicode || s.is_ascii() => s,
            _ => return Ok(Val::Other),
        };
        self.keep(at, text)
    }

    fn keep(&mut self, at: u64, text: String) -> Result<Val, Stop> {
        self.retained += text.len() as u64;
        if self.retained > self.limits.pickle_max_retained {
            return Err(Stop::Limit(
                at,
                format!(
                    "pickle keeps more than {} bytes of strings",
                    self.limits.pickle_max_retained
                ),
            ));
        }
        Ok(Val::Str(text.into()))
    }

    fn len_u32(&mut self, at: u64) -> Result<u64, Stop> {
        Ok(u64::from(u32::from_le_bytes(self.arr(at)?)))
    }

    fn len_i32(&mut self, at: u64) -> Result<u64, Stop> {
        let n = i32::from_le_bytes(self.arr(at)?);
        u64::try_from(n).map_err(|_| Stop::Malformed(at, format!("negative length {n}")))
    }

    fn len_u64(&mut self, at: u64) -> Result<u64, Stop> {
        Ok(u64::from_le_bytes(self.arr(at)?))
    }

    fn depth(&self) -> usize {
        self.stack.len() + self.marks.len()
    }

    fn push(&mut self, at: u64, v: Val) -> Step {
        if self.depth() >= self.limits.pickle_max_stack {
            return Err(Stop::Limit(
                at,
                format!(
                    "pickle stack deeper than {} entries",
                    self.limits.pickle_max_stack
                ),
            ));
        }
        self.stack.push(v);
        Ok(())
    }

    /// Length of the stack below the innermost MARK: what the current frame cannot pop.
    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, at: u64) -> Result<Val, Stop> {
        if self.stack.len() <= self.base() {
            return Err(Stop::Malformed(at, "stack underflow".into()));
        }
        Ok(self.stack.pop().unwrap_or(Val::Other))
    }

    fn top(&self, at: u64) -> Result<&Val, Stop> {
        if self.stack.len() <= self.base() {
            return Err(Stop::Malformed(at, "stack underflow".into()));
        }
        self.stack
            .last()
            .ok_or_else(|| Stop::Malformed(at, "stack underflow".into()))
    }

    fn pop_mark(&mut self, at: u64) -> Result<Vec<Val>, Stop> {
        let base = self
            .marks
            .pop()
            .ok_or_else(|| Stop::Malformed(at, "no MARK to pop to".into()))?;
        Ok(self.stack.split_off(base))
    }

    fn pop_mark_pairs(&mut self, at: u64) -> Result<(), Stop> {
        let items = self.pop_mark(at)?;
        if items.len() % 2 != 0 {
            return Err(Stop::Malformed(
                at,
                "odd number of items for key/value pairs".into(),
            ));
        }
        Ok(())
    }

    fn memo_get(&mut self, at: u64, key: u64) -> Step {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| Stop::Malformed(at, format!("memo key {key} is not defined")))?;
        self.push(at, v)
    }

    fn memo_put(&mut self, at: u64, key: u64) -> Step {
        let v = self.top(at)?.clone();
        if self.memo.len() >= self.limits.pickle_max_memo && !self.memo.contains_key(&key) {
            return Err(Stop::Limit(
                at,
                format!(
                    "pickle memo larger than {} entries",
                    self.limits.pickle_max_memo
                ),
            ));
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn decimal(&mut self, at: u64) -> Result<u64, Stop> {
        let line = self.line(at)?;
        std::str::from_utf8(&line)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Stop::Malformed(at, "memo key is not a decimal number".into()))
    }

    /// Reads the `module\nname\n` operands of GLOBAL and INST.
    fn text_global(&mut self, at: u64) -> Result<(String, String), Stop> {
        let module = self.line(at)?;
        let name = self.line(at)?;
        match (String::from_utf8(module), String::from_utf8(name)) {
            (Ok(m), Ok(n)) => Ok((m, n)),
            _ => Err(Stop::Malformed(at, "global name is not UTF-8".into())),
        }
    }

    /// Records an import and checks it against the allowlist.
    fn import(&mut self, at: u64, module: &str, name: &str, via: &str) -> Val {
        let qual = format!("{module}.{name}");
        if self.scan.globals.len() < MAX_GLOBALS {
            self.scan.globals.insert(qual.clone());
        }
        let why = match allowlist::classify(module, name) {
            Classification::Safe => None,
            Classification::Dangerous(why) => Some(format!("known dangerous: {why}")),
            Classification::Unlisted => Some("not in the safe-globals allowlist".to_owned()),
        };
        if let Some(why) = why {
            self.issue(Issue::new(
                FindingKind::ForbiddenGlobal,
                Some(at),
                format!("imports {qual:?} via {via} ({why})"),
            ));
        }
        Val::Global(qual.into())
    }

    fn unresolved(&mut self, at: u64, message: String) {
        self.issue(Issue::new(FindingKind::UnresolvedImport, Some(at), message));
    }

    /// A value about to be called (REDUCE, NEWOBJ, OBJ) must be an imported global: those
    /// are all checked; anything else is a computed callable the scan cannot vouch for.
    fn check_callable(&mut self, at: u64, op: &str, v: &Val) {
        if !matches!(v, Val::Global(_)) {
            self.unresolved(
                at,
                format!("{op} calls a value that is not an imported global"),
            );
        }
    }

    fn tick(&mut self, at: u64) -> Step {
        self.scan.opcodes += 1;
        if self.scan.opcodes > self.limits.pickle_max_opcodes {
            return Err(Stop::Limit(
                at,
                format!(
                    "more than {} pickle opcodes",
                    self.limits.pickle_max_opcodes
                ),
            ));
        }
        if self.scan.opcodes.is_multiple_of(CLOCK_EVERY)
            && self.started.elapsed() > self.limits.pickle_max_duration
        {
            return Err(Stop::Limit(
                at,
                format!(
                    "pickle walk took longer than {:?}",
                    self.limits.pickle_max_duration
                ),
            ));
        }
        Ok(())
    }

    /// Walks one pickle, up to and including its STOP.
    fn one_pickle(&mut self) -> Step {
        loop {
            let at = self.input.pos();
            let op = match self.input.byte() {
                Ok(Some(op)) => op,
                Ok(None) => return Err(Stop::Truncated(at, "the pickle ends without STOP")),
                Err(e) => return Err(Stop::Io(at, e)),
            };
            self.tick(at)?;
            if op == b'.' {
                self.pop(at)?;
                return Ok(());
            }
            self.opcode(at, op)?;
        }
    }

    fn opcode(&mut self, at: u64, op: u8) -> Step {
        match op {
            // MARK
            b'(' => {
                if self.depth() >= self.limits.pickle_max_stack {
                    return Err(Stop::Limit(
                        at,
                        format!(
                            "pickle stack deeper than {} entries",
                            self.limits.pickle_max_stack
                        ),
                    ));
                }
                self.marks.push(self.stack.len());
            }
            // POP: pops a value, or the MARK when the frame is empty (as the unpickler does).
            b'0' => {
                if self.stack.len() > self.base() {
                    self.pop(at)?;
                } else {
                    self.pop_mark(at)?;
                }
            }
            // POP_MARK
            b'1' => {
                self.pop_mark(at)?;
            }
            // DUP
            b'2' => {
                let v = self.top(at)?.clone();
                self.push(at, v)?;
            }
            // FLOAT, INT, LONG, PERSID: text operands that are never import operands.
            b'F' | b'I' | b'L' | b'P' => {
                self.line(at)?;
                self.push(at, Val::Other)?;
            }
            // STRING: a quoted repr; kept when it has no escapes.
            b'S' => {
                let line = self.line(at)?;
                let v = match line.as_slice() {
                    [q @ (b'\'' | b'"'), body @ .., last]
                        if last == q && !body.contains(&b'\\') =>
                    {
                        match String::from_utf8(body.to_vec()) {
                            Ok(s) if s.is_ascii() && s.len() as u64 <= MAX_KEPT_STRING => {
                                self.keep(at, s)?
                            }
                            _ => Val::Other,
                        }
                    }
                    [q @ (b'\'' | b'"'), .., last] if last == q => Val::Other,
                    _ => return Err(Stop::Malformed(at, "STRING operand is not quoted".into())),
                };
                self.push(at, v)?;
            }
            // UNICODE: raw-unicode-escape (latin-1 plus `\u` escapes); kept when it is
            // ASCII without escapes, where every decoding agrees.
            b'V' => {
                let line = self.line(at)?;
                let v = match String::from_utf8(line) {
                    Ok(s)
                        if s.is_ascii()
                            && !s.contains('\\')
                            && s.len() as u64 <= MAX_KEPT_STRING =>
                    {
                        self.keep(at, s)?
                    }
                    _ => Val::Other,
                };
                self.push(at, v)?;
            }
            // BININT, BININT1, BININT2, BINFLOAT
            b'J' => self.fixed::<4>(at)?,
            b'K' => self.fixed::<1>(at)?,
            b'M' => self.fixed::<2>(at)?,
            b'G' => self.fixed::<8>(at)?,
            // LONG1, LONG4
            0x8a => {
                let n = u64::from(self.arr::<1>(at)?[0]);
                self.skip(at, n)?;
                self.push(at, Val::Other)?;
            }
            0x8b => {
                let n = self.len_i32(at)?;
                self.skip(at, n)?;
                self.push(at, Val::Other)?;
            }
            // BINSTRING, SHORT_BINSTRING (py2 str)
            b'T' => {
                let n = self.len_i32(at)?;
                let v = self.string(at, n, false)?;
                self.push(at, v)?;
            }
            b'U' => {
                let n = u64::from(self.arr::<1>(at)?[0]);
                let v = self.string(at, n, false)?;
                self.push(at, v)?;
            }
            // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
            b'X' => {
                let n = self.len_u32(at)?;
                let v = self.string(at, n, true)?;
                self.push(at, v)?;
            }
            0x8c => {
                let n = u64::from(self.arr::<1>(at)?[0]);
                let v = self.string(at, n, true)?;
                self.push(at, v)?;
            }
            0x8d => {
                let n = self.len_u64(at)?;
                let v = self.string(at, n, true)?;
                self.push(at, v)?;
            }
            // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8: payloads, skipped.
            b'B' => {
                let n = self.len_u32(at)?;
                self.skip(at, n)?;
                self.push(at, Val::Other)?;
            }
            b'C' => {
                let n = u64::from(self.arr::<1>(at)?[0]);
                self.skip(at, n)?;
                self.push(at, Val::Other)?;
            }
            0x8e | 0x96 => {
                let n = self.len_u64(at)?;
                self.skip(at, n)?;
                self.push(at, Val::Other)?;
            }
            // NONE, NEWTRUE, NEWFALSE, EMPTY_LIST, EMPTY_TUPLE, EMPTY_DICT, EMPTY_SET,
            // NEXT_BUFFER
            b'N' | 0x88 | 0x89 | b']' | b')' | b'}' | 0x8f | 0x97 => {
                self.push(at, Val::Other)?;
            }
            // APPEND, SETITEM: pop into the container below.
            b'a' => {
                self.pop(at)?;
                self.top(at)?;
            }
            b's' => {
                self.pop(at)?;
                self.pop(at)?;
                self.top(at)?;
            }
            // APPENDS, ADDITEMS, SETITEMS: pop to MARK into the container below.
            b'e' | 0x90 => {
                self.pop_mark(at)?;
                self.top(at)?;
            }
            b'u' => {
                self.pop_mark_pairs(at)?;
                self.top(at)?;
            }
            // LIST, TUPLE, FROZENSET, DICT: build from the items since MARK.
            b'l' | b't' | 0x91 => {
                self.pop_mark(at)?;
                self.push(at, Val::Other)?;
            }
            b'd' => {
                self.pop_mark_pairs(at)?;
                self.push(at, Val::Other)?;
            }
            // TUPLE1..3, BINPERSID, READONLY_BUFFER
            0x85..=0x87 => {
                for _ in 0..=(op - 0x85) {
                    self.pop(at)?;
                }
                self.push(at, Val::Other)?;
            }
            b'Q' => {
                self.pop(at)?;
                self.push(at, Val::Other)?;
            }
            0x98 => {
                self.top(at)?;
            }
            // GET, BINGET, LONG_BINGET
            b'g' => {
                let k = self.decimal(at)?;
                self.memo_get(at, k)?;
            }
            b'h' => {
                let k = u64::from(self.arr::<1>(at)?[0]);
                self.memo_get(at, k)?;
            }
            b'j' => {
                let k = self.len_u32(at)?;
                self.memo_get(at, k)?;
            }
            // PUT, BINPUT, LONG_BINPUT, MEMOIZE
            b'p' => {
                let k = self.decimal(at)?;
                self.memo_put(at, k)?;
            }
            b'q' => {
                let k = u64::from(self.arr::<1>(at)?[0]);
                self.memo_put(at, k)?;
            }
            b'r' => {
                let k = self.len_u32(at)?;
                self.memo_put(at, k)?;
            }
            0x94 => {
                let k = self.memo.len() as u64;
                self.memo_put(at, k)?;
            }
            // GLOBAL
            b'c' => {
                let (m, n) = self.text_global(at)?;
                let v = self.import(at, &m, &n, "GLOBAL");
                self.push(at, v)?;
            }
            // STACK_GLOBAL: module and name are the two strings below the top.
            0x93 => {
                let name = self.pop(at)?;
                let module = self.pop(at)?;
                let v = match (module, name) {
                    (Val::Str(m), Val::Str(n)) => self.import(at, &m, &n, "STACK_GLOBAL"),
                    _ => {
                        self.unresolved(
                            at,
                            "STACK_GLOBAL on operands that are not plain strings; the import cannot be checked".into(),
                        );
                        Val::Other
                    }
                };
                self.push(at, v)?;
            }
            // INST: import, then instantiate with the items since MARK.
            b'i' => {
                let (m, n) = self.text_global(at)?;
                self.import(at, &m, &n, "INST");
                self.pop_mark(at)?;
                self.push(at, Val::Other)?;
            }
            // OBJ: the first item since MARK is the class.
            b'o' => {
                let items = self.pop_mark(at)?;
                let Some(cls) = items.first() else {
                    return Err(Stop::Malformed(at, "OBJ without a class".into()));
                };
                self.check_callable(at, "OBJ", cls);
                self.push(at, Val::Other)?;
            }
            // REDUCE: callable(args).
            b'R' => {
                self.pop(at)?;
                let callable = self.pop(at)?;
                self.check_callable(at, "REDUCE", &callable);
                self.push(at, Val::Other)?;
            }
            // NEWOBJ: cls.__new__(cls, *args); NEWOBJ_EX adds kwargs.
            0x81 | 0x92 => {
                let operands = if op == 0x81 { 1 } else { 2 };
                for _ in 0..operands {
                    self.pop(at)?;
                }
                let cls = self.pop(at)?;
                self.check_callable(at, "NEWOBJ", &cls);
                self.push(at, Val::Other)?;
            }
            // BUILD: sets state on the object below; on an imported global itself that
            // would rewrite an allowed function or class.
            b'b' => {
                self.pop(at)?;
                if let Val::Global(g) = self.top(at)?.clone() {
                    self.unresolved(
                        at,
                        format!("BUILD sets attributes on the imported global {g:?}"),
                    );
                }
            }
            // PROTO
            0x80 => {
                let v = self.arr::<1>(at)?[0];
                if v > 5 {
                    return Err(Stop::Malformed(at, format!("unsupported protocol {v}")));
                }
            }
            // FRAME: a length hint only.
            0x95 => {
                self.arr::<8>(at)?;
            }
            // EXT1, EXT2, EXT4: imports through copyreg's extension registry.
            0x82..=0x84 => {
                let code = match op {
                    0x82 => u64::from(self.arr::<1>(at)?[0]),
                    0x83 => u64::from(u16::from_le_bytes(self.arr(at)?)),
                    _ => self.len_i32(at)?,
                };
                self.unresolved(
                    at,
                    format!("imports extension code {code} from the copyreg registry, which cannot be checked"),
                );
                self.push(at, Val::Other)?;
            }
            _ => {
                return Err(Stop::Malformed(at, format!("unknown opcode 0x{op:02x}")));
            }
        }
        Ok(())
    }

    fn fixed<const N: usize>(&mut self, at: u64) -> Step {
        self.arr::<N>(at)?;
        self.push(at, Val::Other)
    }
}
