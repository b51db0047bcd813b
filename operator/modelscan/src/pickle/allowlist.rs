//! The globals a pickle may import and still be called safe.
//!
//! The allowlist is exact: a `(module, name)` pair matches only itself, so a module prefix
//! that looks safe (`torch.`, `numpy.`) grants nothing, and a dotted name that walks from an
//! allowed object to its attributes (`OrderedDict.__init__.__globals__`) is rejected. It
//! follows what `torch.load(weights_only=True)` accepts, minus what a weights file does not
//! need. The reasoning for each entry is in [`SAFE_GLOBALS`] and in `docs/pickle-allowlist.md`.
//!
//! Globals that are known to run code or reach the file system, the network or the
//! interpreter ([`DANGEROUS`]) are reported with the reason, so that a reader of the report
//! sees at once why `os.system` is worse than an unknown class; everything outside the
//! allowlist is rejected either way.

/// Every global a safe pickle may import: `(module, name, why it is harmless)`.
///
/// - Containers: `collections.OrderedDict` (every `state_dict`), `builtins.set`,
///   `builtins.frozenset`, `builtins.bytes`, `builtins.bytearray`, `builtins.slice`,
///   `builtins.complex` — constructors of plain data that run no user code.
/// - `_codecs.encode`: protocol-2 pickles spell `bytes` as `_codecs.encode(str, "latin1")`;
///   codec lookup only imports modules of the standard `encodings` package.
/// - Tensor rebuilding (`torch._utils._rebuild_*`, `torch._tensor._rebuild_from_type_v2`):
///   rebuild a tensor from a storage the archive holds; their arguments are values of the
///   same pickle, which the scan checks too. `torch.serialization._get_layout`,
///   `torch.Size`, `torch.device`, `torch.Tensor`, `torch.nn.parameter.Parameter`: plain
///   constructors.
/// - Storage classes (`torch.FloatStorage`, …), dtypes (`torch.float32`, …), layouts,
///   memory formats and quantisation schemes: constants that `torch.save` names.
/// - numpy arrays and scalars (`numpy.core.multiarray._reconstruct`, `numpy.ndarray`,
///   `numpy.dtype`, `numpy.core.multiarray.scalar`, and the numpy 2 `numpy._core`
///   spellings): rebuild an array from data in the pickle.
///
/// Deliberately absent: `copyreg._reconstructor` and `copyreg.__newobj__` (instantiate any
/// class), `torch.storage._load_from_bytes` (calls `torch.load` without `weights_only`),
/// any module class (`torch.nn.modules.*`: a pickled whole model is code, not weights),
/// `builtins.getattr` and friends.
pub const SAFE_GLOBALS: &[(&str, &str, &str)] = &[
    ("collections", "OrderedDict", "the state_dict container"),
    ("builtins", "set", "plain set constructor"),
    ("builtins", "frozenset", "plain frozenset constructor"),
    (
        "builtins",
        "bytes",
        "plain bytes constructor (empty bytes in protocols 0-2)",
    ),
    ("builtins", "bytearray", "plain bytearray constructor"),
    ("builtins", "slice", "plain slice constructor"),
    ("builtins", "complex", "plain complex-number constructor"),
    (
        "_codecs",
        "encode",
        "bytes in protocol-2 pickles; standard codecs only",
    ),
    (
        "torch._utils",
        "_rebuild_tensor",
        "tensor from a storage (torch < 1.0 layout)",
    ),
    (
        "torch._utils",
        "_rebuild_tensor_v2",
        "tensor from a storage (every torch.save)",
    ),
    (
        "torch._utils",
        "_rebuild_parameter",
        "nn.Parameter around a rebuilt tensor",
    ),
    (
        "torch._utils",
        "_rebuild_parameter_with_state",
        "nn.Parameter with attributes",
    ),
    (
        "torch._utils",
        "_rebuild_qtensor",
        "quantised tensor from a storage",
    ),
    (
        "torch._utils",
        "_rebuild_sparse_tensor",
        "sparse tensor from its parts",
    ),
    (
        "torch._utils",
        "_rebuild_meta_tensor_no_storage",
        "meta tensor, no data",
    ),
    (
        "torch._utils",
        "_rebuild_nested_tensor",
        "nested tensor from its parts",
    ),
    (
        "torch._utils",
        "_rebuild_device_tensor_from_numpy",
        "tensor from a numpy array",
    ),
    (
        "torch._tensor",
        "_rebuild_from_type_v2",
        "tensor subclass; callee checked too",
    ),
    (
        "torch.serialization",
        "_get_layout",
        "maps a layout name to its constant",
    ),
    ("torch", "Size", "shape tuple"),
    ("torch", "device", "device descriptor"),
    (
        "torch",
        "Tensor",
        "tensor type, as _rebuild_from_type_v2 names it",
    ),
    (
        "torch.nn.parameter",
        "Parameter",
        "parameter type, as _rebuild_from_type_v2 names it",
    ),
    ("torch", "DoubleStorage", "storage type of a persistent id"),
    ("torch", "FloatStorage", "storage type of a persistent id"),
    ("torch", "HalfStorage", "storage type of a persistent id"),
    (
        "torch",
        "BFloat16Storage",
        "storage type of a persistent id",
    ),
    ("torch", "LongStorage", "storage type of a persistent id"),
    ("torch", "IntStorage", "storage type of a persistent id"),
    ("torch", "ShortStorage", "storage type of a persistent id"),
    ("torch", "CharStorage", "storage type of a persistent id"),
    ("torch", "ByteStorage", "storage type of a persistent id"),
    ("torch", "BoolStorage", "storage type of a persistent id"),
    (
        "torch",
        "ComplexDoubleStorage",
        "storage type of a persistent id",
    ),
    (
        "torch",
        "ComplexFloatStorage",
        "storage type of a persistent id",
    ),
    ("torch", "QUInt8Storage", "storage type of a persistent id"),
    ("torch", "QInt8Storage", "storage type of a persistent id"),
    ("torch", "QInt32Storage", "storage type of a persistent id"),
    (
        "torch",
        "QUInt4x2Storage",
        "storage type of a persistent id",
    ),
    (
        "torch",
        "QUInt2x4Storage",
        "storage type of a persistent id",
    ),
    ("torch", "UntypedStorage", "storage type of a persistent id"),
    (
        "torch.storage",
        "UntypedStorage",
        "storage type of a persistent id",
    ),
    (
        "torch.storage",
        "TypedStorage",
        "storage type of a persistent id",
    ),
    ("torch", "float16", "dtype constant"),
    ("torch", "float32", "dtype constant"),
    ("torch", "float64", "dtype constant"),
    ("torch", "bfloat16", "dtype constant"),
    ("torch", "float8_e4m3fn", "dtype constant"),
    ("torch", "float8_e5m2", "dtype constant"),
    ("torch", "float8_e4m3fnuz", "dtype constant"),
    ("torch", "float8_e5m2fnuz", "dtype constant"),
    ("torch", "complex64", "dtype constant"),
    ("torch", "complex128", "dtype constant"),
    ("torch", "uint8", "dtype constant"),
    ("torch", "uint16", "dtype constant"),
    ("torch", "uint32", "dtype constant"),
    ("torch", "uint64", "dtype constant"),
    ("torch", "int8", "dtype constant"),
    ("torch", "int16", "dtype constant"),
    ("torch", "int32", "dtype constant"),
    ("torch", "int64", "dtype constant"),
    ("torch", "bool", "dtype constant"),
    ("torch", "strided", "layout constant"),
    ("torch", "sparse_coo", "layout constant"),
    ("torch", "sparse_csr", "layout constant"),
    ("torch", "sparse_csc", "layout constant"),
    ("torch", "sparse_bsr", "layout constant"),
    ("torch", "sparse_bsc", "layout constant"),
    ("torch", "contiguous_format", "memory-format constant"),
    ("torch", "channels_last", "memory-format constant"),
    ("torch", "channels_last_3d", "memory-format constant"),
    ("torch", "preserve_format", "memory-format constant"),
    ("torch", "per_tensor_affine", "quantisation-scheme constant"),
    (
        "torch",
        "per_channel_affine",
        "quantisation-scheme constant",
    ),
    (
        "torch",
        "per_tensor_symmetric",
        "quantisation-scheme constant",
    ),
    (
        "torch",
        "per_channel_symmetric",
        "quantisation-scheme constant",
    ),
    (
        "torch",
        "per_channel_affine_float_qparams",
        "quantisation-scheme constant",
    ),
    (
        "numpy.core.multiarray",
        "_reconstruct",
        "ndarray from data in the pickle",
    ),
    (
        "numpy._core.multiarray",
        "_reconstruct",
        "ndarray from data (numpy 2)",
    ),
    (
        "numpy.core.multiarray",
        "scalar",
        "numpy scalar from data in the pickle",
    ),
    (
        "numpy._core.multiarray",
        "scalar",
        "numpy scalar from data (numpy 2)",
    ),
    ("numpy", "ndarray", "array type passed to _reconstruct"),
    ("numpy", "dtype", "dtype constructor"),
];

/// Modules (with their submodules) and single globals known to run code, touch the file
/// system, network or interpreter, or load further pickles: `(module, name or "*", why)`.
pub const DANGEROUS: &[(&str, &str, &str)] = &[
    ("builtins", "eval", "evaluates Python source"),
    ("builtins", "exec", "executes Python source"),
    ("builtins", "compile", "compiles Python source"),
    ("builtins", "__import__", "imports any module"),
    (
        "builtins",
        "getattr",
        "reaches any attribute, e.g. os.system",
    ),
    ("builtins", "setattr", "rewrites any attribute"),
    ("builtins", "delattr", "deletes any attribute"),
    ("builtins", "open", "opens files"),
    ("builtins", "input", "reads the terminal"),
    ("builtins", "breakpoint", "starts a debugger"),
    ("builtins", "globals", "exposes the interpreter's globals"),
    ("builtins", "vars", "exposes an object's namespace"),
    ("os", "*", "runs commands and touches files"),
    ("posix", "*", "runs commands and touches files"),
    ("nt", "*", "runs commands and touches files"),
    ("subprocess", "*", "runs commands"),
    ("pty", "*", "spawns processes"),
    ("sys", "*", "controls the interpreter"),
    ("runpy", "*", "runs Python modules"),
    ("importlib", "*", "imports any module"),
    ("code", "*", "runs Python source"),
    ("pdb", "*", "runs Python source"),
    ("timeit", "*", "runs Python source"),
    ("webbrowser", "*", "opens URLs and starts programs"),
    ("pickle", "*", "loads further, unchecked pickles"),
    ("_pickle", "*", "loads further, unchecked pickles"),
    ("cPickle", "*", "loads further, unchecked pickles"),
    ("dill", "*", "loads further, unchecked pickles"),
    ("joblib", "*", "loads further, unchecked pickles"),
    ("shelve", "*", "loads further, unchecked pickles"),
    ("marshal", "*", "loads code objects"),
    ("types", "*", "builds code and function objects"),
    ("ctypes", "*", "calls native code"),
    ("shutil", "*", "copies and deletes files"),
    ("socket", "*", "opens network connections"),
    ("http", "*", "opens network connections"),
    ("urllib", "*", "opens network connections"),
    ("requests", "*", "opens network connections"),
    ("asyncio", "*", "runs subprocesses and network I/O"),
    ("multiprocessing", "*", "spawns processes"),
    ("operator", "attrgetter", "reaches any attribute"),
    ("operator", "methodcaller", "calls any method"),
    ("functools", "partial", "binds arguments to any callable"),
    (
        "torch",
        "load",
        "loads a further pickle without weights_only",
    ),
    (
        "torch.serialization",
        "load",
        "loads a further pickle without weights_only",
    ),
    (
        "torch.storage",
        "_load_from_bytes",
        "calls torch.load without weights_only",
    ),
    ("torch.hub", "*", "downloads and runs code"),
    ("torch.jit", "*", "loads TorchScript code"),
    ("torch._dynamo", "*", "compiles and runs code"),
    ("torch._inductor", "*", "compiles and runs code"),
    ("numpy", "load", "loads object arrays through pickle"),
    ("numpy.lib.npyio", "*", "loads object arrays through pickle"),
];

/// What the allowlist says about one imported global.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification {
    /// In [`SAFE_GLOBALS`].
    Safe,
    /// In [`DANGEROUS`], with the reason.
    Dangerous(&'static str),
    /// Neither: rejected because it is not known to be safe.
    Unlisted,
}

/// Classifies `module.name` as a pickle imports it. `__builtin__` (what protocol 0–2
/// pickles written by Python 3 call `builtins`, translated back by `fix_imports`) is read
/// as `builtins`, as the unpickler does.
pub fn classify(module: &str, name: &str) -> Classification {
    let module = match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        m => m,
    };
    if SAFE_GLOBALS
        .iter()
        .any(|&(m, n, _)| m == module && n == name)
    {
        return Classification::Safe;
    }
    DANGEROUS
        .iter()
        .find(|&&(m, n, _)| {
            let module_matches = module == m
                || module
                    .strip_prefix(m)
                    .is_some_and(|rest| rest.starts_with('.'));
            // A dotted name walks attributes: `getattr.__self__` starts at `getattr`.
            let head = name.split('.').next().unwrap_or(name);
            module_matches && (n == "*" || n == head)
        })
        .map_or(Classification::Unlisted, |&(_, _, why)| {
            Classification::Dangerous(why)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_pairs_only() {
        assert_eq!(
            classify("torch._utils", "_rebuild_tensor_v2"),
            Classification::Safe
        );
        assert_eq!(classify("__builtin__", "set"), Classification::Safe);
        // A dotted name on an allowed object reaches its attributes: not allowed.
        assert_eq!(
            classify("collections", "OrderedDict.__init__"),
            Classification::Unlisted
        );
        assert_eq!(
            classify("torch", "_utils._rebuild_tensor_v2"),
            Classification::Unlisted
        );
        assert_eq!(
            classify("torch.nn.modules.linear", "Linear"),
            Classification::Unlisted
        );
    }

    #[test]
    fn dangerous_even_under_safe_looking_prefixes() {
        for (m, n) in [
            ("builtins", "eval"),
            ("__builtin__", "getattr"),
            ("builtins", "getattr.__self__"),
            ("os", "system"),
            ("os.path", "join"),
            ("posix", "system"),
            ("subprocess", "Popen"),
            ("runpy", "_run_code"),
            ("webbrowser", "open"),
            ("torch", "load"),
            ("torch.storage", "_load_from_bytes"),
            ("torch.hub", "load"),
            ("pickle", "loads"),
            ("importlib", "import_module"),
            ("importlib.util", "spec_from_file_location"),
        ] {
            assert!(
                matches!(classify(m, n), Classification::Dangerous(_)),
                "{m}.{n}"
            );
        }
        // Similar-looking module names are not dangerous by prefix, just unlisted.
        assert_eq!(classify("ossify", "x"), Classification::Unlisted);
    }

    #[test]
    fn the_markdown_page_lists_exactly_the_allowlist() {
        let page = include_str!("../../docs/pickle-allowlist.md");
        let safe_part = &page[..page.find("## Known dangerous").unwrap()];
        let rows = safe_part.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, SAFE_GLOBALS.len());
        for &(m, n, _) in SAFE_GLOBALS.iter().chain(DANGEROUS) {
            assert!(
                page.contains(&format!("| `{m}` | `{n}` |")),
                "{m}.{n} missing"
            );
        }
    }

    #[test]
    fn the_lists_do_not_overlap() {
        for &(m, n, _) in SAFE_GLOBALS {
            assert!(
                !DANGEROUS
                    .iter()
                    .any(|&(dm, dn, _)| dm == m && (dn == "*" || dn == n)),
                "{m}.{n} is in both lists"
            );
        }
    }
}
