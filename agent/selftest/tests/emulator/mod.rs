//! A small PTX interpreter for the subset of instructions `kernels/selftest.ptx` uses, so
//! that the hand-written kernels are executed, not only assembled, on machines without a
//! GPU. It runs every thread of a block in turn up to the next `bar.sync`, then releases
//! the barrier, which is what the CUDA execution model guarantees a correct kernel (one
//! whose barriers every thread reaches) and no more.
//!
//! It is deliberately strict: an instruction, operand or state space it does not know is
//! an error, as are out-of-bounds accesses and a barrier that only some threads reach.

use std::collections::HashMap;

/// Base address of the emulated global memory (non-zero, so a null pointer faults).
pub const GLOBAL_BASE: u64 = 0x7000_0000_0000;

#[derive(Clone, Debug)]
struct Instr {
    /// `Some((negated, predicate register))` for `@%p` / `@!%p`.
    guard: Option<(bool, String)>,
    op: String,
    args: Vec<String>,
}

#[derive(Clone, Debug)]
struct Entry {
    params: Vec<String>,
    body: Vec<Instr>,
    labels: HashMap<String, usize>,
}

/// A parsed PTX module.
#[derive(Debug)]
pub struct Module {
    entries: HashMap<String, Entry>,
    /// Module-scope `.shared` symbols: name → (offset, size).
    shared: HashMap<String, (u64, u64)>,
    shared_size: u64,
}

/// A kernel argument.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A pointer into global memory (an address from [`Memory`]).
    Ptr(u64),
    /// A `.u32` value.
    U32(u32),
    /// A `.u64` value.
    U64(u64),
}

/// Emulated global memory: one flat byte array starting at [`GLOBAL_BASE`].
#[derive(Default)]
pub struct Memory {
    bytes: Vec<u8>,
}

impl Memory {
    /// Allocates `len` bytes (8-byte aligned); returns their address.
    pub fn alloc(&mut self, len: usize) -> u64 {
        let at = self.bytes.len().next_multiple_of(8);
        self.bytes.resize(at + len, 0);
        GLOBAL_BASE + at as u64
    }

    /// Allocates and fills with `data`.
    pub fn alloc_f32(&mut self, data: &[f32]) -> u64 {
        let at = self.alloc(data.len() * 4);
        for (i, v) in data.iter().enumerate() {
            self.write(at + 4 * i as u64, &v.to_le_bytes()).unwrap();
        }
        at
    }

    /// Allocates and fills with `data`.
    pub fn alloc_u32(&mut self, data: &[u32]) -> u64 {
        let at = self.alloc(data.len() * 4);
        for (i, v) in data.iter().enumerate() {
            self.write(at + 4 * i as u64, &v.to_le_bytes()).unwrap();
        }
        at
    }

    /// Reads `len` f32 values at `at`.
    pub fn read_f32(&self, at: u64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| f32::from_bits(self.load(at + 4 * i as u64, 4).unwrap() as u32))
            .collect()
    }

    /// Reads `len` u32 values at `at`.
    pub fn read_u32(&self, at: u64, len: usize) -> Vec<u32> {
        (0..len)
            .map(|i| self.load(at + 4 * i as u64, 4).unwrap() as u32)
            .collect()
    }

    /// Reads one u64 at `at`.
    pub fn read_u64(&self, at: u64) -> u64 {
        self.load(at, 8).unwrap()
    }

    fn range(&self, at: u64, len: usize) -> Result<std::ops::Range<usize>, String> {
        let off = at
            .checked_sub(GLOBAL_BASE)
            .ok_or_else(|| format!("global access below memory at {at:#x}"))?
            as usize;
        if !off.is_multiple_of(len) {
            return Err(format!("misaligned {len}-byte global access at {at:#x}"));
        }
        if off + len > self.bytes.len() {
            return Err(format!("global access out of bounds at {at:#x}"));
        }
        Ok(off..off + len)
    }

    fn load(&self, at: u64, len: usize) -> Result<u64, String> {
        let r = self.range(at, len)?;
        let mut b = [0u8; 8];
        b[..len].copy_from_slice(&self.bytes[r]);
        Ok(u64::from_le_bytes(b))
    }

    fn write(&mut self, at: u64, data: &[u8]) -> Result<(), String> {
        let r = self.range(at, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}

fn strip_comment(line: &str) -> &str {
    line.split("//").next().unwrap_or("").trim()
}

impl Module {
    /// Parses the module text.
    pub fn parse(src: &str) -> Result<Self, String> {
        let mut entries = HashMap::new();
        let mut shared = HashMap::new();
        let mut shared_size = 0u64;
        let lines: Vec<&str> = src.lines().map(strip_comment).collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            if let Some(decl) = line.strip_prefix(".shared ") {
                // `.shared .align 4 .b8 name[1024];`
                let last = decl.split_whitespace().last().ok_or("empty .shared")?;
                let (name, size) = last
                    .trim_end_matches(';')
                    .trim_end_matches(']')
                    .split_once('[')
                    .ok_or_else(|| format!("unsupported .shared declaration {line:?}"))?;
                let size: u64 = size.parse().map_err(|_| format!("bad size in {line:?}"))?;
                shared_size = shared_size.next_multiple_of(16);
                shared.insert(name.to_owned(), (shared_size, size));
                shared_size += size;
            } else if let Some(rest) = line.strip_prefix(".visible .entry ") {
                let name = rest.split('(').next().unwrap().trim().to_owned();
                let mut params = Vec::new();
                i += 1;
                while !lines[i].starts_with(')') {
                    let p = lines[i].trim_end_matches(',');
                    params.push(p.split_whitespace().last().unwrap().to_owned());
                    i += 1;
                }
                i += 1;
                if lines[i] != "{" {
                    return Err(format!("expected {{ after the parameters of {name}"));
                }
                let mut body = Vec::new();
                let mut labels = HashMap::new();
                i += 1;
                while lines[i] != "}" {
                    let l = lines[i];
                    if l.is_empty() || l.starts_with(".reg") {
                    } else if let Some(label) = l.strip_suffix(':') {
                        labels.insert(label.to_owned(), body.len());
                    } else {
                        body.push(parse_instr(l)?);
                    }
                    i += 1;
                }
                entries.insert(
                    name,
                    Entry {
                        params,
                        body,
                        labels,
                    },
                );
            }
            i += 1;
        }
        Ok(Self {
            entries,
            shared,
            shared_size,
        })
    }

    /// Runs `entry` over a `grid` of `block`-sized blocks.
    pub fn launch(
        &self,
        entry: &str,
        grid: (u32, u32),
        block: (u32, u32),
        args: &[Arg],
        mem: &mut Memory,
    ) -> Result<(), String> {
        let e = self
            .entries
            .get(entry)
            .ok_or_else(|| format!("no entry {entry}"))?;
        if e.params.len() != args.len() {
            return Err(format!(
                "{entry} takes {} parameters, {} given",
                e.params.len(),
                args.len()
            ));
        }
        let params: HashMap<&str, Arg> = e
            .params
            .iter()
            .map(String::as_str)
            .zip(args.iter().copied())
            .collect();
        for by in 0..grid.1 {
            for bx in 0..grid.0 {
                self.run_block(e, &params, grid, block, (bx, by), mem)?;
            }
        }
        Ok(())
    }

    fn run_block(
        &self,
        e: &Entry,
        params: &HashMap<&str, Arg>,
        grid: (u32, u32),
        block: (u32, u32),
        ctaid: (u32, u32),
        mem: &mut Memory,
    ) -> Result<(), String> {
        let mut shared = vec![0u8; self.shared_size as usize];
        let mut threads: Vec<Thread> = (0..block.1)
            .flat_map(|ty| (0..block.0).map(move |tx| (tx, ty)))
            .map(|tid| Thread {
                pc: 0,
                regs: HashMap::new(),
                state: State::Running,
                special: Special {
                    tid,
                    ctaid,
                    ntid: block,
                    nctaid: grid,
                },
            })
            .collect();
        loop {
            for t in threads.iter_mut() {
                if t.state == State::AtBarrier {
                    continue;
                }
                let mut cx = Cx {
                    module: self,
                    entry: e,
                    params,
                    mem,
                    shared: &mut shared,
                };
                t.run(&mut cx)?;
            }
            let waiting = threads
                .iter()
                .filter(|t| t.state == State::AtBarrier)
                .count();
            let done = threads.iter().filter(|t| t.state == State::Done).count();
            if done == threads.len() {
                return Ok(());
            }
            if waiting != threads.len() {
                return Err(format!(
                    "bar.sync reached by {waiting} of {} threads ({done} exited)",
                    threads.len()
                ));
            }
            for t in threads.iter_mut() {
                t.state = State::Running;
            }
        }
    }
}

fn parse_instr(line: &str) -> Result<Instr, String> {
    let line = line
        .strip_suffix(';')
        .ok_or_else(|| format!("instruction without ';': {line:?}"))?;
    let (guard, rest) = match line.strip_prefix('@') {
        Some(r) => {
            let (g, rest) = r.split_once(char::is_whitespace).unwrap();
            let (neg, reg) = match g.strip_prefix('!') {
                Some(reg) => (true, reg),
                None => (false, g),
            };
            (Some((neg, reg.to_owned())), rest.trim())
        }
        None => (None, line),
    };
    let (op, args) = match rest.split_once(char::is_whitespace) {
        Some((op, args)) => (
            op,
            args.split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
        ),
        None => (rest, Vec::new()),
    };
    Ok(Instr {
        guard,
        op: op.to_owned(),
        args,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Running,
    AtBarrier,
    Done,
}

struct Special {
    tid: (u32, u32),
    ctaid: (u32, u32),
    ntid: (u32, u32),
    nctaid: (u32, u32),
}

struct Thread {
    pc: usize,
    regs: HashMap<String, u64>,
    state: State,
    special: Special,
}

struct Cx<'a> {
    module: &'a Module,
    entry: &'a Entry,
    params: &'a HashMap<&'a str, Arg>,
    mem: &'a mut Memory,
    shared: &'a mut Vec<u8>,
}

const STEP_LIMIT: usize = 50_000_000;

impl Thread {
    /// Runs until a barrier or `ret`.
    fn run(&mut self, cx: &mut Cx<'_>) -> Result<(), String> {
        for _ in 0..STEP_LIMIT {
            let Some(ins) = cx.entry.body.get(self.pc) else {
                return Err("ran off the end of the entry without ret".into());
            };
            self.pc += 1;
            if let Some((neg, p)) = &ins.guard {
                let v = self.reg(p)? != 0;
                if v == *neg {
                    continue;
                }
            }
            self.exec(ins, cx)
                .map_err(|e| format!("{} {}: {e}", ins.op, ins.args.join(", ")))?;
            if self.state != State::Running {
                return Ok(());
            }
        }
        Err("step limit reached (endless loop?)".into())
    }

    fn reg(&self, name: &str) -> Result<u64, String> {
        self.regs
            .get(name)
            .copied()
            .ok_or_else(|| format!("register {name} read before written"))
    }

    fn set(&mut self, name: &str, v: u64) -> Result<(), String> {
        if !name.starts_with('%') {
            return Err(format!("destination {name} is not a register"));
        }
        self.regs.insert(name.to_owned(), v);
        Ok(())
    }

    fn value(&self, a: &str, cx: &Cx<'_>) -> Result<u64, String> {
        let s = &self.special;
        Ok(match a {
            "%tid.x" => s.tid.0.into(),
            "%tid.y" => s.tid.1.into(),
            "%ctaid.x" => s.ctaid.0.into(),
            "%ctaid.y" => s.ctaid.1.into(),
            "%ntid.x" => s.ntid.0.into(),
            "%ntid.y" => s.ntid.1.into(),
            "%nctaid.x" => s.nctaid.0.into(),
            "%nctaid.y" => s.nctaid.1.into(),
            r if r.starts_with('%') => self.reg(r)?,
            f if f.starts_with("0f") => {
                u64::from_str_radix(&f[2..], 16).map_err(|e| e.to_string())?
            }
            d if d.bytes().all(|b| b.is_ascii_digit()) => {
                d.parse().map_err(|_| format!("bad {d}"))?
            }
            sym => cx
                .module
                .shared
                .get(sym)
                .map(|&(off, _)| off)
                .ok_or_else(|| format!("unknown operand {sym}"))?,
        })
    }

    fn address(&self, a: &str, cx: &Cx<'_>) -> Result<u64, String> {
        let inner = a
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .ok_or_else(|| format!("{a} is not an address"))?;
        // `[reg]` or `[reg+offset]`.
        match inner.split_once('+') {
            Some((base, off)) => {
                let off: u64 = off.parse().map_err(|_| format!("bad offset in {a}"))?;
                Ok(self.value(base, cx)?.wrapping_add(off))
            }
            None => self.value(inner, cx),
        }
    }

    fn exec(&mut self, ins: &Instr, cx: &mut Cx<'_>) -> Result<(), String> {
        let a = &ins.args;
        let v = |i: usize| self.value(&a[i], cx);
        let m32 = |x: u64| x & 0xffff_ffff;
        let f = |x: u64| f32::from_bits(x as u32);
        match ins.op.as_str() {
            "ld.param.u64" | "ld.param.u32" => {
                let name = a[1].trim_start_matches('[').trim_end_matches(']');
                let arg = cx
                    .params
                    .get(name)
                    .ok_or_else(|| format!("no parameter {name}"))?;
                let val = match (ins.op.as_str(), arg) {
                    ("ld.param.u64", Arg::Ptr(p) | Arg::U64(p)) => *p,
                    ("ld.param.u32", Arg::U32(x)) => u64::from(*x),
                    _ => return Err(format!("parameter {name} passed as {arg:?}")),
                };
                self.set(&a[0], val)
            }
            "cvta.to.global.u64" | "mov.u32" | "mov.u64" | "mov.f32" => {
                let x = v(1)?;
                self.set(&a[0], if ins.op == "mov.u32" { m32(x) } else { x })
            }
            "mad.lo.u32" => {
                let r = v(1)?.wrapping_mul(v(2)?).wrapping_add(v(3)?);
                self.set(&a[0], m32(r))
            }
            "mul.lo.u32" => self.set(&a[0], m32(v(1)?.wrapping_mul(v(2)?))),
            "mul.wide.u32" => self.set(&a[0], m32(v(1)?) * m32(v(2)?)),
            "add.u32" => self.set(&a[0], m32(v(1)?.wrapping_add(v(2)?))),
            "add.u64" => self.set(&a[0], v(1)?.wrapping_add(v(2)?)),
            "shl.b32" => {
                let s = m32(v(2)?);
                self.set(&a[0], if s >= 32 { 0 } else { m32(v(1)? << s) })
            }
            "shl.b64" => {
                let s = v(2)?;
                self.set(&a[0], if s >= 64 { 0 } else { v(1)? << s })
            }
            "shr.u32" => {
                let s = m32(v(2)?);
                self.set(&a[0], if s >= 32 { 0 } else { m32(v(1)?) >> s })
            }
            "shr.u64" => {
                let s = v(2)?;
                self.set(&a[0], if s >= 64 { 0 } else { v(1)? >> s })
            }
            "and.b32" => self.set(&a[0], m32(v(1)? & v(2)?)),
            "xor.b32" => self.set(&a[0], m32(v(1)? ^ v(2)?)),
            "not.b32" => self.set(&a[0], m32(!v(1)?)),
            "and.pred" => self.set(&a[0], u64::from(v(1)? != 0 && v(2)? != 0)),
            "cvt.u64.u32" | "cvt.u32.u64" => self.set(&a[0], m32(v(1)?)),
            "selp.b32" | "selp.u64" => {
                let x = if v(3)? != 0 { v(1)? } else { v(2)? };
                self.set(&a[0], if ins.op == "selp.b32" { m32(x) } else { x })
            }
            op if op.starts_with("setp.") => {
                let parts: Vec<&str> = op.split('.').collect();
                let (x, y) = if parts[2] == "u32" {
                    (m32(v(1)?), m32(v(2)?))
                } else if parts[2] == "u64" {
                    (v(1)?, v(2)?)
                } else {
                    return Err(format!("unsupported type {}", parts[2]));
                };
                let r = match parts[1] {
                    "lt" => x < y,
                    "ge" => x >= y,
                    "ne" => x != y,
                    "eq" => x == y,
                    c => return Err(format!("unsupported comparison {c}")),
                };
                self.set(&a[0], u64::from(r))
            }
            "fma.rn.f32" => {
                let r = f(v(1)?).mul_add(f(v(2)?), f(v(3)?));
                self.set(&a[0], u64::from(r.to_bits()))
            }
            "ld.global.f32" | "ld.global.cv.u32" => {
                let at = self.address(&a[1], cx)?;
                let x = cx.mem.load(at, 4)?;
                self.set(&a[0], x)
            }
            "st.global.f32" | "st.global.u32" => {
                let at = self.address(&a[0], cx)?;
                let x = m32(v(1)?) as u32;
                cx.mem.write(at, &x.to_le_bytes())
            }
            "red.global.add.u64" => {
                let at = self.address(&a[0], cx)?;
                let x = cx.mem.load(at, 8)?.wrapping_add(v(1)?);
                cx.mem.write(at, &x.to_le_bytes())
            }
            "ld.shared.f32" | "st.shared.f32" => {
                let (addr, reg) = if ins.op.starts_with("ld") {
                    (&a[1], &a[0])
                } else {
                    (&a[0], &a[1])
                };
                let at = self.address(addr, cx)? as usize;
                if !at.is_multiple_of(4) || at + 4 > cx.shared.len() {
                    return Err(format!("shared access out of bounds or misaligned at {at}"));
                }
                if ins.op.starts_with("ld") {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&cx.shared[at..at + 4]);
                    self.set(reg, u64::from(u32::from_le_bytes(b)))
                } else {
                    let x = m32(self.value(reg, cx)?) as u32;
                    cx.shared[at..at + 4].copy_from_slice(&x.to_le_bytes());
                    Ok(())
                }
            }
            "bar.sync" => {
                self.state = State::AtBarrier;
                Ok(())
            }
            "bra" | "bra.uni" => {
                self.pc = *cx
                    .entry
                    .labels
                    .get(&a[0])
                    .ok_or_else(|| format!("no label {}", a[0]))?;
                Ok(())
            }
            "ret" => {
                self.state = State::Done;
                Ok(())
            }
            other => Err(format!("instruction {other} is not emulated")),
        }
    }
}
