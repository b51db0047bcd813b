//! NVIDIA reference integrity manifests (RIMs): ISO/IEC 19770-2 SWID tags as NVIDIA
//! publishes them for each driver and VBIOS release, following the TCG RIM information
//! model:
//!
//! ```xml
//! <SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" name="GH100" …>
//!   <Meta colloquialVersion="96.00.5E.00.01" product="GH100" …/>
//!   <Payload>
//!     <Resource type="Measurement" index="3" active="True" alternatives="1"
//!               ns2:Hash0="73bb…" name="HashedMeasurement_3_FSP" size="48"/>   <!-- ns2: …xmlenc#sha384 -->
//!     …
//!   </Payload>
//!   <ds:Signature>…</ds:Signature>   <!-- enveloped, see xmldsig -->
//! </SoftwareIdentity>
//! ```
//!
//! `index` is 0-based: RIM index *i* is the SPDM measurement block *i + 1*. An inactive
//! measurement is not compared; an active one matches when the block equals any of its
//! `alternatives` (`Hash0`, `Hash1`, …), with the declared `size`.

use std::collections::BTreeMap;

use roxmltree::{Document, ParsingOptions};
use serde::{Deserialize, Serialize};

use super::xmldsig::{self, SignatureError, VerifiedSignature};

/// The SWID namespace.
pub const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
/// The namespace of the `HashN` attributes (SHA-384 digests), as NVIDIA writes them.
pub const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
/// Largest RIM accepted, in bytes (NVIDIA's are about 20 KiB).
pub const MAX_RIM_LEN: usize = 1 << 20;
/// Most XML nodes parsed in one RIM.
const MAX_NODES: u32 = 20_000;
/// Most measurements in one RIM, and most alternatives of one.
pub const MAX_MEASUREMENTS: usize = 1024;
pub const MAX_ALTERNATIVES: usize = 64;

/// Which firmware a RIM describes; the report's opaque data carries the version of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RimKind {
    /// The GPU driver (measurements of the driver-loaded microcode); version like `550.90.07`.
    Driver,
    /// The VBIOS; version like `96.00.9F.00.01`.
    Vbios,
}

impl RimKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Vbios => "VBIOS",
        }
    }
}

/// One reference measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoldenMeasurement {
    /// 0-based index (the SPDM block index minus one).
    pub index: u32,
    pub name: String,
    pub active: bool,
    /// Size of each value in bytes.
    pub size: usize,
    /// The accepted values.
    pub alternatives: Vec<Vec<u8>>,
}

/// A parsed RIM, its signature already checked (that does not depend on time; the signing
/// chain is judged later, at the time of the report).
#[derive(Clone, Debug)]
pub struct Rim {
    pub kind: RimKind,
    /// `Meta/@colloquialVersion`: the driver or VBIOS version it describes.
    pub version: String,
    /// `SoftwareIdentity/@tagId`.
    pub tag_id: String,
    /// `Meta/@product` (e.g. `GH100`).
    pub product: String,
    /// By index.
    pub measurements: BTreeMap<u32, GoldenMeasurement>,
    /// The signature check: the signing chain (DER, leaf first) or why it failed.
    pub signature: Result<VerifiedSignature, SignatureError>,
    /// The signature checks of the signing chain up to the bundle's RIM root, made once
    /// when a bundle is loaded (they do not depend on time); `None` for a RIM parsed alone.
    pub links: Option<Result<String, String>>,
}

impl Rim {
    /// A description for findings: "driver RIM 550.90.07 (tag 0d2f…)".
    pub fn label(&self) -> String {
        format!(
            "{} RIM {} (tagId {}…)",
            self.kind.name(),
            self.version,
            self.tag_id.get(..12).unwrap_or(&self.tag_id)
        )
    }

    /// The measurements compared with a report.
    pub fn active(&self) -> impl Iterator<Item = &GoldenMeasurement> {
        self.measurements.values().filter(|m| m.active)
    }
}

/// Parses a RIM and checks its signature. `Err` when it is not a RIM at all (the message
/// names the element or attribute); a bad signature is not an error here but recorded in
/// [`Rim::signature`].
pub fn parse_rim(xml: &str, kind: RimKind) -> Result<Rim, String> {
    if xml.len() > MAX_RIM_LEN {
        return Err(format!(
            "{} bytes, more than the {MAX_RIM_LEN} accepted",
            xml.len()
        ));
    }
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(xml, options).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().namespace() != Some(SWID_NS) || root.tag_name().name() != "SoftwareIdentity"
    {
        return Err(format!(
            "the document element is {{{}}}{}, not a SWID SoftwareIdentity ({{{SWID_NS}}})",
            root.tag_name().namespace().unwrap_or(""),
            root.tag_name().name()
        ));
    }
    let child = |name: &str| {
        root.children()
            .find(|n| n.tag_name().namespace() == Some(SWID_NS) && n.tag_name().name() == name)
            .ok_or_else(|| format!("SoftwareIdentity has no {name} element"))
    };
    let meta = child("Meta")?;
    let version = meta
        .attribute("colloquialVersion")
        .filter(|v| !v.trim().is_empty())
        .ok_or("Meta has no colloquialVersion (the driver or VBIOS version)")?
        .trim()
        .to_owned();
    let payload = child("Payload")?;
    let mut measurements = BTreeMap::new();
    for (i, r) in payload
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "Resource")
        .filter(|n| n.attribute("type") == Some("Measurement"))
        .enumerate()
    {
        if i == MAX_MEASUREMENTS {
            return Err(format!("more than {MAX_MEASUREMENTS} measurements"));
        }
        let m = parse_measurement(r).map_err(|e| format!("Payload/Resource[{}]: {e}", i + 1))?;
        if measurements.contains_key(&m.index) {
            return Err(format!(
                "Payload/Resource[{}]: measurement index {} appears twice",
                i + 1,
                m.index
            ));
        }
        measurements.insert(m.index, m);
    }
    if measurements.is_empty() {
        return Err("Payload holds no Resource of type Measurement".into());
    }
    Ok(Rim {
        kind,
        version,
        tag_id: root.attribute("tagId").unwrap_or("").to_owned(),
        product: meta.attribute("product").unwrap_or("").to_owned(),
        measurements,
        signature: xmldsig::verify_enveloped(&doc),
        links: None,
    })
}

fn parse_measurement(r: roxmltree::Node<'_, '_>) -> Result<GoldenMeasurement, String> {
    let attr = |name: &str| {
        r.attribute(name)
            .ok_or_else(|| format!("attribute {name} missing"))
    };
    let number = |name: &str| -> Result<usize, String> {
        attr(name)?.trim().parse::<usize>().map_err(|_| {
            format!(
                "attribute {name}={:?} is not a number",
                attr(name).unwrap_or("")
            )
        })
    };
    let index = u32::try_from(number("index")?).map_err(|_| "index out of range".to_string())?;
    let active = match attr("active")?.trim() {
        a if a.eq_ignore_ascii_case("true") => true,
        a if a.eq_ignore_ascii_case("false") => false,
        other => return Err(format!("active={other:?} is neither True nor False")),
    };
    let size = number("size")?;
    let count = number("alternatives")?;
    if count == 0 || count > MAX_ALTERNATIVES {
        return Err(format!(
            "index {index}: alternatives={count}, expected 1 to {MAX_ALTERNATIVES}"
        ));
    }
    let alternatives = (0..count)
        .map(|i| {
            let name = format!("Hash{i}");
            let value = r
                .attribute((SHA384_NS, name.as_str()))
                .ok_or_else(|| format!("index {index}: {name} (SHA-384 namespace) missing"))?;
            let bytes = hex::decode(value.trim())
                .map_err(|e| format!("index {index}: {name} is not hex: {e}"))?;
            if bytes.len() != size {
                return Err(format!(
                    "index {index}: {name} has {} bytes, the declared size is {size}",
                    bytes.len()
                ));
            }
            Ok(bytes)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(GoldenMeasurement {
        index,
        name: r.attribute("name").unwrap_or("").to_owned(),
        active,
        size,
        alternatives,
    })
}
