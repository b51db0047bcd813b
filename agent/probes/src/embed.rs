//! A sentence-embedding model (a sentence-transformers BERT such as all-MiniLM-L6-v2) run
//! with candle: tokenizer.json through the `tokenizers` crate, the BERT encoder from
//! `model.safetensors`, then the pooling and normalisation that `modules.json` lists.
//!
//! Every file is read into memory once, and those bytes — not the files on disk, which
//! could change after they were hashed — are checked against the verified manifest
//! before they are parsed (see [`crate::loaded`]).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::loaded::LoadedFiles;

/// The files a sentence-transformers BERT needs.
pub const CONFIG: &str = "config.json";
/// The Hugging Face tokenizer.
pub const TOKENIZER: &str = "tokenizer.json";
/// The weights.
pub const WEIGHTS: &str = "model.safetensors";
/// The sentence-transformers pipeline (optional).
pub const MODULES: &str = "modules.json";
/// The sentence-transformers input settings (optional; `max_seq_length`).
pub const SENTENCE_CONFIG: &str = "sentence_bert_config.json";

/// Texts run through the model at once: enough to keep the cores busy, few enough that
/// padding to the longest text in a batch stays cheap.
const BATCH: usize = 32;

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file is missing or malformed; the message names it.
    #[error("{file}: {problem}")]
    File {
        /// The file, relative to the model root.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// The model needs something this runner does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// Tokenising failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The tensor computation failed.
    #[error("inference: {0}")]
    Inference(#[from] candle_core::Error),
}

fn file_err(file: &str, problem: impl ToString) -> ModelError {
    ModelError::File {
        file: file.to_owned(),
        problem: problem.to_string(),
    }
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the real (unpadded) tokens.
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
}

/// A loaded sentence-embedding model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    pooling: Pooling,
    normalize: bool,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("device", &self.device)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    type_: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
}

/// The sentence-transformers pipeline after the encoder: which files describe it and
/// what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    /// The pooling.
    pub pooling: Pooling,
    /// Whether vectors are scaled to unit length.
    pub normalize: bool,
}

/// The files that describe the pipeline beyond the fixed ones: the pooling module's
/// `config.json`, if `modules.json` names one.
pub fn pipeline_files(modules: Option<&[u8]>) -> Result<Vec<String>, ModelError> {
    let Some(modules) = modules else {
        return Ok(Vec::new());
    };
    let entries: Vec<ModuleEntry> =
        serde_json::from_slice(modules).map_err(|e| file_err(MODULES, e))?;
    Ok(entries
        .iter()
        .filter(|m| m.type_.ends_with(".Pooling") && !m.path.is_empty())
        .map(|m| format!("{}/config.json", m.path.trim_end_matches('/')))
        .collect())
}

/// Reads the pipeline from `modules.json` and the pooling config (both already loaded).
/// No `modules.json`: mean pooling, no normalisation (a bare encoder). A module this
/// runner does not implement is refused rather than skipped, since skipping it would
/// produce other vectors than the model's.
pub fn pipeline(files: &LoadedFiles) -> Result<Pipeline, ModelError> {
    let Some(modules) = files.get(MODULES) else {
        return Ok(Pipeline {
            pooling: Pooling::Mean,
            normalize: false,
        });
    };
    let entries: Vec<ModuleEntry> =
        serde_json::from_slice(modules).map_err(|e| file_err(MODULES, e))?;
    let mut pooling = None;
    let mut normalize = false;
    for m in &entries {
        match m.type_.rsplit('.').next().unwrap_or_default() {
            "Transformer" => {}
            "Normalize" => normalize = true,
            "Pooling" => {
                let name = format!("{}/config.json", m.path.trim_end_matches('/'));
                pooling = Some(match files.get(&name) {
                    Some(bytes) => pooling_mode(&name, bytes)?,
                    None => Pooling::Mean,
                });
            }
            _ => {
                return Err(ModelError::Unsupported(format!(
                    "{MODULES}: module {} is not implemented (Transformer, Pooling and Normalize are)",
                    m.type_
                )));
            }
        }
    }
    Ok(Pipeline {
        pooling: pooling
            .ok_or_else(|| ModelError::Unsupported(format!("{MODULES}: no Pooling module")))?,
        normalize,
    })
}

fn pooling_mode(name: &str, bytes: &[u8]) -> Result<Pooling, ModelError> {
    let c: PoolingConfig = serde_json::from_slice(bytes).map_err(|e| file_err(name, e))?;
    match (
        c.pooling_mode_mean_tokens,
        c.pooling_mode_cls_token,
        c.pooling_mode_max_tokens
            || c.pooling_mode_mean_sqrt_len_tokens
            || c.pooling_mode_weightedmean_tokens
            || c.pooling_mode_lasttoken,
    ) {
        (true, false, false) => Ok(Pooling::Mean),
        (false, true, false) => Ok(Pooling::Cls),
        _ => Err(ModelError::Unsupported(format!(
            "{name}: only one of pooling_mode_mean_tokens or pooling_mode_cls_token is implemented"
        ))),
    }
}

impl Embedder {
    /// Builds the model from files already read and checked, on `device`.
    pub fn load(files: &LoadedFiles, device: &Device) -> Result<Self, ModelError> {
        let config: Config = serde_json::from_slice(files.require(CONFIG)?)
            .map_err(|e| file_err(CONFIG, format!("not a BERT config: {e}")))?;
        let pipeline = pipeline(files)?;
        let max_len = match files.get(SENTENCE_CONFIG) {
            Some(bytes) => {
                serde_json::from_slice::<SentenceConfig>(bytes)
                    .map_err(|e| file_err(SENTENCE_CONFIG, e))?
                    .max_seq_length
            }
            None => None,
        }
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);

        let mut tokenizer =
            Tokenizer::from_bytes(files.require(TOKENIZER)?).map_err(|e| file_err(TOKENIZER, e))?;
        // tokenizer.json often pads every input to a fixed length; the model's own
        // sentence length and per-batch padding give the same vectors, faster.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| file_err(TOKENIZER, e))?;
        let pad = tokenizer.get_padding().cloned().unwrap_or_default();
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..pad
        }));

        // Tensors are copied out of the checked bytes onto the device: no second copy of
        // the file, and no memory map of a file that could change under it.
        let vb = VarBuilder::from_slice_safetensors(files.require(WEIGHTS)?, DType::F32, device)
            .map_err(|e| file_err(WEIGHTS, e))?;
        let model = BertModel::load(vb, &config).map_err(|e| {
            file_err(
                WEIGHTS,
                format!("not the BERT that config.json describes: {e}"),
            )
        })?;
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            pooling: pipeline.pooling,
            normalize: pipeline.normalize,
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One vector per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, ModelError> {
            let rows = encodings
                .iter()
                .map(|e| Tensor::new(f(e), &self.device))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Tensor::stack(&rows, 0)?)
        };
        let ids = rows(&|e| e.get_ids())?;
        let type_ids = rows(&|e| e.get_type_ids())?;
        let mask = rows(&|e| e.get_attention_mask())?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Mean => mean_pool(&hidden, &mask)?,
            Pooling::Cls => cls_pool(&hidden)?,
        };
        let pooled = if self.normalize {
            l2_normalize(&pooled)?
        } else {
            pooled
        };
        Ok(pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

/// Mean of `hidden` (batch × tokens × dim) over the tokens whose `mask` (batch × tokens)
/// is 1: padding must not pull the mean towards the pad token's vector.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    // A text of no token cannot happen ([CLS] and [SEP] are always there), but a zero
    // count must not turn into NaN.
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    summed.broadcast_div(&counts)
}

/// The first token's vector of each row.
pub fn cls_pool(hidden: &Tensor) -> candle_core::Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)
}

/// Each row scaled to unit Euclidean length (a zero row stays zero).
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norms)
}

/// The files an embedding model is built from: the fixed ones plus the pooling config
/// `modules.json` names. Required ones first, then the optional ones (which may be
/// absent from the model).
pub fn needed_files(model_dir: &std::path::Path) -> Result<(Vec<String>, Vec<String>), ModelError> {
    let required = vec![CONFIG.to_owned(), TOKENIZER.to_owned(), WEIGHTS.to_owned()];
    let mut optional = vec![MODULES.to_owned(), SENTENCE_CONFIG.to_owned()];
    // modules.json is read here only to learn the pooling config's name; the bytes used
    // are read again with the others and checked against the manifest.
    let modules = match std::fs::read(model_dir.join(MODULES)) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(file_err(MODULES, e)),
    };
    optional.extend(pipeline_files(modules.as_deref())?);
    Ok((required, optional))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5) && a.len() == b.len()
    }

    #[test]
    fn mean_pooling_ignores_padding() {
        let dev = Device::Cpu;
        // Two texts of 3 token slots, dim 2; the second has one padding token whose
        // vector is large so that counting it would show.
        let hidden = Tensor::new(
            &[
                [[1f32, 2.], [3., 4.], [5., 6.]],
                [[1., 1.], [3., 3.], [100., 100.]],
            ],
            &dev,
        )
        .unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &dev).unwrap();
        let pooled = mean_pool(&hidden, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert!(close(&pooled[0], &[3., 4.]), "{pooled:?}");
        assert!(close(&pooled[1], &[2., 2.]), "{pooled:?}");
        let cls = cls_pool(&hidden).unwrap().to_vec2::<f32>().unwrap();
        assert!(close(&cls[1], &[1., 1.]), "{cls:?}");
    }

    #[test]
    fn normalisation_gives_unit_rows() {
        let x = Tensor::new(&[[3f32, 4.], [0., 0.]], &Device::Cpu).unwrap();
        let n = l2_normalize(&x).unwrap().to_vec2::<f32>().unwrap();
        assert!(close(&n[0], &[0.6, 0.8]), "{n:?}");
        assert!(close(&n[1], &[0., 0.]), "{n:?}");
    }

    fn loaded(items: &[(&str, &str)]) -> LoadedFiles {
        LoadedFiles::from_map(
            items
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn the_pipeline_follows_modules_json() {
        let modules = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#;
        assert_eq!(
            pipeline_files(Some(modules.as_bytes())).unwrap(),
            ["1_Pooling/config.json"]
        );
        let mean = r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false}"#;
        let p = pipeline(&loaded(&[
            (MODULES, modules),
            ("1_Pooling/config.json", mean),
        ]))
        .unwrap();
        assert_eq!(
            p,
            Pipeline {
                pooling: Pooling::Mean,
                normalize: true
            }
        );
        let cls = r#"{"pooling_mode_cls_token": true}"#;
        let no_norm = modules.replace(
            r#",
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}"#,
            "",
        );
        let p = pipeline(&loaded(&[
            (MODULES, &no_norm),
            ("1_Pooling/config.json", cls),
        ]))
        .unwrap();
        assert_eq!((p.pooling, p.normalize), (Pooling::Cls, false));
        // No modules.json: a bare encoder, mean pooled.
        assert_eq!(pipeline(&loaded(&[])).unwrap().pooling, Pooling::Mean);
    }

    #[test]
    fn unimplemented_modules_and_poolings_are_refused() {
        let dense = r#"[{"path":"","type":"sentence_transformers.models.Transformer"},
            {"path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#;
        let e = pipeline(&loaded(&[(MODULES, dense)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("module sentence_transformers.models.Dense is not implemented"),
            "{e}"
        );
        let modules = r#"[{"path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;
        let max = r#"{"pooling_mode_max_tokens": true}"#;
        let e = pipeline(&loaded(&[
            (MODULES, modules),
            ("1_Pooling/config.json", max),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("1_Pooling/config.json: only one of"), "{e}");
        let e = pipeline(&loaded(&[(MODULES, "{")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("modules.json: "), "{e}");
    }
}
