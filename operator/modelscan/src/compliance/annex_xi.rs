//! The EU AI Act (Regulation (EU) 2024/1689) Annex XI, Section 1: the technical
//! documentation every provider of a general-purpose AI model keeps (Article 53(1)(a)),
//! mapped to where a Hugging Face style model card says it.
//!
//! Each item is documented when any of its front-matter keys is present and not empty, or
//! any of its headings is present with text under it. The keys and headings are those of
//! the Hugging Face model-card template and metadata specification, plus plain names for
//! what the template has no key for. `docs/annex-xi.md` gives the same table.

use super::card::ModelCard;

/// One item of Annex XI, Section 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnexXiItem {
    /// Point of the Annex, e.g. `1(d)`.
    pub point: &'static str,
    /// Stable id used in reports, e.g. `parameter-count`.
    pub id: &'static str,
    /// What the Annex asks for.
    pub requirement: &'static str,
    /// Front-matter keys (dotted paths) that document it.
    pub keys: &'static [&'static str],
    /// Headings that document it.
    pub headings: &'static [&'static str],
}

impl AnnexXiItem {
    /// Whether the card documents this item.
    pub fn documented_by(&self, card: &ModelCard) -> bool {
        self.keys.iter().any(|k| card.field(k).is_some())
            || self.headings.iter().any(|h| card.has_section(h))
    }
}

/// Annex XI, Section 1, points 1(a)–(f) and 2(a)–(e).
pub const ANNEX_XI: &[AnnexXiItem] = &[
    AnnexXiItem {
        point: "1(a)",
        id: "intended-tasks",
        requirement: "the tasks the model is intended to perform and the AI systems it can be integrated in",
        keys: &["pipeline_tag", "intended_use", "intended_uses"],
        headings: &[
            "uses",
            "intended uses",
            "intended use",
            "direct use",
            "downstream use",
        ],
    },
    AnnexXiItem {
        point: "1(b)",
        id: "acceptable-use",
        requirement: "the acceptable use policies applicable",
        keys: &["acceptable_use_policy", "acceptable_use"],
        headings: &[
            "acceptable use",
            "acceptable use policy",
            "out of scope use",
            "prohibited uses",
            "misuse",
        ],
    },
    AnnexXiItem {
        point: "1(c)",
        id: "release-and-distribution",
        requirement: "the date of release and methods of distribution",
        keys: &["release_date", "distribution"],
        headings: &[
            "release",
            "release date",
            "model release date",
            "distribution",
            "model sources",
        ],
    },
    AnnexXiItem {
        point: "1(d)",
        id: "architecture",
        requirement: "the architecture",
        keys: &["architecture", "model_type"],
        headings: &[
            "model architecture",
            "architecture",
            "model architecture and objective",
            "technical specifications",
        ],
    },
    AnnexXiItem {
        point: "1(d)",
        id: "parameter-count",
        requirement: "the number of parameters",
        keys: &[
            "parameter_count",
            "num_parameters",
            "parameters",
            "model_size",
        ],
        headings: &["parameters", "number of parameters", "model size"],
    },
    AnnexXiItem {
        point: "1(e)",
        id: "modality",
        requirement: "the modality (e.g. text, image) and format of inputs and outputs",
        keys: &[
            "modality",
            "input_modality",
            "output_modality",
            "pipeline_tag",
        ],
        headings: &[
            "modality",
            "input and output",
            "inputs and outputs",
            "input",
            "output",
        ],
    },
    AnnexXiItem {
        point: "1(f)",
        id: "licence",
        requirement: "the licence",
        keys: &["license", "license_name", "license_link"],
        headings: &["license", "licence"],
    },
    AnnexXiItem {
        point: "2(a)",
        id: "integration",
        requirement: "the instructions of use, infrastructure and tools required to integrate the model",
        keys: &["library_name"],
        headings: &[
            "how to get started with the model",
            "how to use",
            "usage",
            "getting started",
            "quick start",
        ],
    },
    AnnexXiItem {
        point: "2(b)",
        id: "design-and-training",
        requirement: "the design specifications and training process: methodologies, key design choices, what the model optimises for",
        keys: &["training_procedure"],
        headings: &[
            "training procedure",
            "training details",
            "training methodology",
            "training",
        ],
    },
    AnnexXiItem {
        point: "2(c)",
        id: "training-data",
        requirement: "the data used for training, testing and validation: type, provenance, curation",
        keys: &["datasets", "training_data"],
        headings: &["training data", "datasets", "dataset", "data"],
    },
    AnnexXiItem {
        point: "2(d)",
        id: "compute",
        requirement: "the computational resources used to train the model (e.g. floating point operations, training time)",
        keys: &[
            "training_compute",
            "co2_eq_emissions.hardware_used",
            "co2_eq_emissions.training_time",
        ],
        headings: &[
            "compute infrastructure",
            "compute",
            "hardware",
            "training hardware",
            "training time",
        ],
    },
    AnnexXiItem {
        point: "2(e)",
        id: "energy",
        requirement: "the known or estimated energy consumption of the model",
        keys: &["energy_consumption", "co2_eq_emissions"],
        headings: &[
            "environmental impact",
            "energy consumption",
            "carbon emissions",
        ],
    },
];

/// The items the card does not document.
pub fn missing(card: &ModelCard) -> Vec<&'static AnnexXiItem> {
    ANNEX_XI
        .iter()
        .filter(|item| !item.documented_by(card))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_markdown_page_maps_every_item() {
        let page = include_str!("../../docs/annex-xi.md");
        let rows = page
            .lines()
            .filter(|l| l.starts_with("| 1(") || l.starts_with("| 2("))
            .count();
        assert_eq!(rows, ANNEX_XI.len());
        for item in ANNEX_XI {
            assert!(
                page.contains(&format!("| {} | `{}` |", item.point, item.id)),
                "{}",
                item.id
            );
            for key in item.keys {
                assert!(page.contains(&format!("`{key}`")), "{key}");
            }
        }
    }

    #[test]
    fn keys_or_headings_document_an_item() {
        let energy = ANNEX_XI.iter().find(|i| i.id == "energy").unwrap();
        let by_key = ModelCard::parse("---\nco2_eq_emissions: 10\n---\n").unwrap();
        let by_heading = ModelCard::parse("## Environmental Impact\n\n3 kWh\n").unwrap();
        let empty_heading = ModelCard::parse("## Environmental Impact\n").unwrap();
        assert!(energy.documented_by(&by_key));
        assert!(energy.documented_by(&by_heading));
        assert!(!energy.documented_by(&empty_heading));
        assert_eq!(missing(&by_heading).len(), ANNEX_XI.len() - 1);
    }
}
