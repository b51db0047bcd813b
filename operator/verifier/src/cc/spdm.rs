//! Parser for the SPDM 1.1 measurement exchange a Hopper GPU in confidential-computing mode
//! returns: the `GET_MEASUREMENTS` request followed by the `MEASUREMENTS` response, as in
//! DMTF DSP0274 1.1 (sections 10.11 "GET_MEASUREMENTS request and MEASUREMENTS response").
//!
//! ```text
//! request (37 bytes when a signature is requested)
//!   0  SPDMVersion              1   0x11
//!   1  RequestResponseCode      1   0xE0 GET_MEASUREMENTS
//!   2  Param1                   1   bit 0: signature requested
//!   3  Param2                   1   measurement operation (0xFF: all blocks)
//!   4  Nonce                    32  (present only when a signature is requested)
//!  36  SlotIDParam              1
//! response
//!   0  SPDMVersion              1   0x11
//!   1  RequestResponseCode      1   0x60 MEASUREMENTS
//!   2  Param1                   1
//!   3  Param2                   1   slot
//!   4  NumberOfBlocks           1
//!   5  MeasurementRecordLength  3   little endian, L1
//!   8  MeasurementRecord        L1  blocks: Index 1, MeasurementSpecification 1,
//!                                   MeasurementSize 2, Measurement (DMTF: type 1, size 2, value)
//! 8+L1 Nonce                    32  responder nonce
//! 40+L1 OpaqueLength            2   L2 (at most 1024)
//! 42+L1 OpaqueData              L2  NVIDIA: little-endian TLVs (type 2, size 2, value)
//! 42+L1+L2 Signature            96  ECDSA P-384 r || s over request || response up to here
//! ```
//!
//! Parsing is bounded and never panics: every read checks the remaining length, and every
//! error names the field and its offset from the start of the report.

use std::fmt;

use serde::Serialize;

/// SPDM version this parser understands (1.1).
pub const SPDM_VERSION_1_1: u8 = 0x11;
/// `GET_MEASUREMENTS` request code.
pub const GET_MEASUREMENTS: u8 = 0xE0;
/// `MEASUREMENTS` response code.
pub const MEASUREMENTS: u8 = 0x60;
/// SPDM `ERROR` response code.
pub const SPDM_ERROR: u8 = 0x7F;
/// Length of the request when a signature is requested (header, nonce, slot).
pub const REQUEST_LEN: usize = 37;
/// Length of an ECDSA P-384 signature in the fixed r || s form.
pub const SIGNATURE_LEN: usize = 96;
/// The largest report accepted (the 24-bit record length allows 16 MiB; real reports are a
/// few KiB).
pub const MAX_REPORT_LEN: usize = 1 << 20;
/// SPDM 1.1 limits opaque data to 1024 bytes.
pub const MAX_OPAQUE_LEN: usize = 1024;

/// NVIDIA opaque-data field: driver version (NUL-terminated ASCII).
pub const OPAQUE_DRIVER_VERSION: u16 = 3;
/// NVIDIA opaque-data field: VBIOS version (8 bytes, little endian).
pub const OPAQUE_VBIOS_VERSION: u16 = 6;
/// NVIDIA opaque-data field: firmware ID (SHA-384 digest, matches the leaf certificate's
/// TCG DICE FWID).
pub const OPAQUE_FWID: u16 = 20;

/// What went wrong while parsing a report: the field, its offset in the report, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// Name of the field (as in the SPDM specification, or the NVIDIA opaque-data TLV).
    pub field: &'static str,
    /// Offset of the field from the start of the report (request included).
    pub offset: usize,
    /// What was wrong with it.
    pub kind: ParseErrorKind,
}

/// The kinds of parse error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The report ends inside the field.
    Truncated { needed: usize, available: usize },
    /// The field holds a value this verifier does not accept.
    Unexpected { found: String, expected: String },
    /// Bytes are left over after the signature.
    TrailingBytes { count: usize },
    /// The report is larger than [`MAX_REPORT_LEN`].
    TooLarge { len: usize },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {} at offset {}: ", self.field, self.offset)?;
        match &self.kind {
            ParseErrorKind::Truncated { needed, available } => write!(
                f,
                "report truncated (needs {needed} bytes, {available} left)"
            ),
            ParseErrorKind::Unexpected { found, expected } => {
                write!(f, "found {found}, expected {expected}")
            }
            ParseErrorKind::TrailingBytes { count } => {
                write!(f, "{count} unexpected bytes after the signature")
            }
            ParseErrorKind::TooLarge { len } => {
                write!(
                    f,
                    "report is {len} bytes, more than the {MAX_REPORT_LEN} accepted"
                )
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// The `GET_MEASUREMENTS` request as recorded in the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeasurementRequest {
    pub spdm_version: u8,
    pub param1: u8,
    /// Measurement operation: 0xFF asks for all blocks.
    pub param2: u8,
    /// The requester's nonce: must be the verifier's challenge.
    #[serde(serialize_with = "hex_ser")]
    pub nonce: [u8; 32],
    pub slot_id: u8,
}

/// One measurement block of the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeasurementBlock {
    pub index: u8,
    /// Bit 0 set: the block follows the DMTF measurement format.
    pub specification: u8,
    /// DMTF measurement value type (bit 7: raw bit stream rather than digest), when the block
    /// is in DMTF format.
    pub value_type: Option<u8>,
    /// The measurement value (DMTF format) or the whole measurement (other formats).
    #[serde(serialize_with = "hex_ser")]
    pub value: Vec<u8>,
}

/// One NVIDIA opaque-data field (type, value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpaqueField {
    pub id: u16,
    /// NVIDIA's name for the field, where known.
    pub name: &'static str,
    #[serde(serialize_with = "hex_ser")]
    pub value: Vec<u8>,
}

/// The `MEASUREMENTS` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeasurementResponse {
    pub spdm_version: u8,
    pub param1: u8,
    pub param2: u8,
    pub blocks: Vec<MeasurementBlock>,
    /// The responder's nonce.
    #[serde(serialize_with = "hex_ser")]
    pub nonce: [u8; 32],
    pub opaque: Vec<OpaqueField>,
    /// ECDSA P-384 signature, r || s.
    #[serde(serialize_with = "hex_ser")]
    pub signature: Vec<u8>,
}

/// A parsed report: request, response, and where the signed part ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParsedReport {
    pub request: MeasurementRequest,
    pub response: MeasurementResponse,
    /// Length of the signed message (request and response up to the signature).
    pub signed_len: usize,
}

impl ParsedReport {
    /// The first opaque-data field with this id.
    pub fn opaque_field(&self, id: u16) -> Option<&[u8]> {
        self.response
            .opaque
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.value.as_slice())
    }

    /// The firmware ID the report carries (reports from older drivers have none).
    pub fn fwid(&self) -> Option<&[u8]> {
        self.opaque_field(OPAQUE_FWID)
    }

    /// The driver version from the opaque data (e.g. `550.90.07`).
    pub fn driver_version(&self) -> Option<String> {
        let raw = self.opaque_field(OPAQUE_DRIVER_VERSION)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Some(String::from_utf8_lossy(&raw[..end]).into_owned())
    }

    /// The VBIOS version from the opaque data, in nvidia-smi's form (e.g. `96.00.9F.00.01`).
    pub fn vbios_version(&self) -> Option<String> {
        let raw = self.opaque_field(OPAQUE_VBIOS_VERSION)?;
        // 8 bytes, little endian: the low 32 bits hold the first four parts (most
        // significant first), the next byte the fifth (the OEM part).
        let &[b0, b1, b2, b3, b4, ..] = raw else {
            return None;
        };
        Some(format!("{b3:02X}.{b2:02X}.{b1:02X}.{b0:02X}.{b4:02X}"))
    }
}

/// NVIDIA's names for the opaque-data fields (the ids NVIDIA documents for Hopper and
/// later; unknown ids are kept with the name `UNKNOWN`).
pub fn opaque_field_name(id: u16) -> &'static str {
    match id {
        1 => "CERT_ISSUER_NAME",
        2 => "CERT_AUTHORITY_KEY_IDENTIFIER",
        3 => "DRIVER_VERSION",
        4 => "GPU_INFO",
        5 => "SKU",
        6 => "VBIOS_VERSION",
        7 => "MANUFACTURER_ID",
        8 => "TAMPER_DETECTION",
        9 => "SMC",
        10 => "VPR",
        11 => "NVDEC0_STATUS",
        12 => "MSRSCNT",
        13 => "CPRINFO",
        14 => "BOARD_ID",
        15 => "CHIP_SKU",
        16 => "CHIP_SKU_MOD",
        17 => "PROJECT",
        18 => "PROJECT_SKU",
        19 => "PROJECT_SKU_MOD",
        20 => "FWID",
        21 => "PROTECTED_PCIE_STATUS",
        22 => "SWITCH_PDI",
        23 => "FLOORSWEPT_PORTS",
        24 => "POSITION_ID",
        25 => "LOCK_SWITCH_STATUS",
        32 => "GPU_LINK_CONN",
        33 => "SYS_ENABLE_STATUS",
        34 => "OPAQUE_DATA_VERSION",
        35 => "CHIP_INFO",
        36 => "FEATURE_FLAG",
        255 => "INVALID",
        _ => "UNKNOWN",
    }
}

/// Bounded reader over a part of the report; `base` is the part's offset in the report, so
/// that errors carry absolute offsets.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], base: usize) -> Self {
        Self { data, pos: 0, base }
    }

    /// Absolute offset of the next byte.
    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], ParseError> {
        let available = self.data.len().saturating_sub(self.pos);
        if n > available {
            return Err(ParseError {
                field,
                offset: self.offset(),
                kind: ParseErrorKind::Truncated {
                    needed: n,
                    available,
                },
            });
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ParseError> {
        Ok(self.take(field, 1)?[0])
    }

    fn u16_le(&mut self, field: &'static str) -> Result<u16, ParseError> {
        let b = self.take(field, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u24_le(&mut self, field: &'static str) -> Result<usize, ParseError> {
        let b = self.take(field, 3)?;
        Ok(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }

    fn array32(&mut self, field: &'static str) -> Result<[u8; 32], ParseError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(field, 32)?);
        Ok(out)
    }

    /// Reads a byte and requires it to equal `expected`.
    fn expect_u8(
        &mut self,
        field: &'static str,
        expected: u8,
        what: &str,
    ) -> Result<u8, ParseError> {
        let offset = self.offset();
        let v = self.u8(field)?;
        if v != expected {
            return Err(unexpected(
                field,
                offset,
                format!("{v:#04x}"),
                format!("{expected:#04x} ({what})"),
            ));
        }
        Ok(v)
    }
}

fn unexpected(field: &'static str, offset: usize, found: String, expected: String) -> ParseError {
    ParseError {
        field,
        offset,
        kind: ParseErrorKind::Unexpected { found, expected },
    }
}

/// Parses a report (binary: request followed by response).
pub fn parse_report(report: &[u8]) -> Result<ParsedReport, ParseError> {
    if report.len() > MAX_REPORT_LEN {
        return Err(ParseError {
            field: "report",
            offset: 0,
            kind: ParseErrorKind::TooLarge { len: report.len() },
        });
    }
    let mut r = Reader::new(report, 0);
    let request = parse_request(&mut r)?;

    // Response header.
    let version_at = r.pos;
    let spdm_version = r.u8("response SPDMVersion")?;
    if spdm_version != request.spdm_version {
        return Err(unexpected(
            "response SPDMVersion",
            version_at,
            format!("{spdm_version:#04x}"),
            format!("{:#04x} (the request's version)", request.spdm_version),
        ));
    }
    let code_at = r.pos;
    let code = r.u8("response RequestResponseCode")?;
    if code != MEASUREMENTS {
        let found = if code == SPDM_ERROR {
            format!("{code:#04x} (SPDM ERROR response)")
        } else {
            format!("{code:#04x}")
        };
        return Err(unexpected(
            "response RequestResponseCode",
            code_at,
            found,
            format!("{MEASUREMENTS:#04x} (MEASUREMENTS)"),
        ));
    }
    let param1 = r.u8("response Param1")?;
    let param2 = r.u8("response Param2")?;
    let blocks_at = r.pos;
    let number_of_blocks = r.u8("response NumberOfBlocks")?;
    let record_len = r.u24_le("response MeasurementRecordLength")?;
    let record_at = r.pos;
    let record = r.take("response MeasurementRecord", record_len)?;
    let blocks = parse_record(record, record_at)?;
    if blocks.len() != usize::from(number_of_blocks) {
        return Err(unexpected(
            "response NumberOfBlocks",
            blocks_at,
            number_of_blocks.to_string(),
            format!("{} (the blocks in MeasurementRecord)", blocks.len()),
        ));
    }
    let nonce = r.array32("response Nonce")?;
    let opaque_len_at = r.pos;
    let opaque_len = usize::from(r.u16_le("response OpaqueLength")?);
    if opaque_len > MAX_OPAQUE_LEN {
        return Err(unexpected(
            "response OpaqueLength",
            opaque_len_at,
            opaque_len.to_string(),
            format!("at most {MAX_OPAQUE_LEN} (SPDM 1.1)"),
        ));
    }
    let opaque_at = r.pos;
    let opaque_raw = r.take("response OpaqueData", opaque_len)?;
    let opaque = parse_opaque(opaque_raw, opaque_at)?;
    let signed_len = r.pos;
    let signature = r.take("response Signature", SIGNATURE_LEN)?.to_vec();
    let rest = report.len() - r.pos;
    if rest != 0 {
        return Err(ParseError {
            field: "response Signature",
            offset: r.pos,
            kind: ParseErrorKind::TrailingBytes { count: rest },
        });
    }
    Ok(ParsedReport {
        request,
        response: MeasurementResponse {
            spdm_version,
            param1,
            param2,
            blocks,
            nonce,
            opaque,
            signature,
        },
        signed_len,
    })
}

fn parse_request(r: &mut Reader<'_>) -> Result<MeasurementRequest, ParseError> {
    let spdm_version = r.expect_u8("request SPDMVersion", SPDM_VERSION_1_1, "SPDM 1.1")?;
    r.expect_u8(
        "request RequestResponseCode",
        GET_MEASUREMENTS,
        "GET_MEASUREMENTS",
    )?;
    let param1_at = r.offset();
    let param1 = r.u8("request Param1")?;
    if param1 & 1 == 0 {
        return Err(unexpected(
            "request Param1",
            param1_at,
            format!("{param1:#04x}"),
            "bit 0 set (signature requested; an unsigned report proves nothing)".into(),
        ));
    }
    let param2 = r.u8("request Param2")?;
    let nonce = r.array32("request Nonce")?;
    let slot_id = r.u8("request SlotIDParam")?;
    Ok(MeasurementRequest {
        spdm_version,
        param1,
        param2,
        nonce,
        slot_id,
    })
}

fn parse_record(record: &[u8], base: usize) -> Result<Vec<MeasurementBlock>, ParseError> {
    let mut r = Reader::new(record, base);
    let mut blocks = Vec::new();
    while r.pos < record.len() {
        blocks.push(parse_block(&mut r)?);
    }
    Ok(blocks)
}

fn parse_block(r: &mut Reader<'_>) -> Result<MeasurementBlock, ParseError> {
    let index = r.u8("measurement block Index")?;
    let specification = r.u8("measurement block MeasurementSpecification")?;
    let size = usize::from(r.u16_le("measurement block MeasurementSize")?);
    let measurement_at = r.offset();
    let measurement = r.take("measurement block Measurement", size)?;
    let (value_type, value) = if specification & 1 == 1 {
        // DMTF measurement: type 1, size 2, value.
        let mut m = Reader::new(measurement, measurement_at);
        let value_type = m.u8("DMTFSpecMeasurementValueType")?;
        let size_at = m.offset();
        let value_size = usize::from(m.u16_le("DMTFSpecMeasurementValueSize")?);
        if value_size + 3 != size {
            return Err(unexpected(
                "DMTFSpecMeasurementValueSize",
                size_at,
                value_size.to_string(),
                format!("{} (MeasurementSize - 3)", size.saturating_sub(3)),
            ));
        }
        (
            Some(value_type),
            m.take("DMTFSpecMeasurementValue", value_size)?,
        )
    } else {
        (None, measurement)
    };
    Ok(MeasurementBlock {
        index,
        specification,
        value_type,
        value: value.to_vec(),
    })
}

fn parse_opaque(raw: &[u8], base: usize) -> Result<Vec<OpaqueField>, ParseError> {
    let mut r = Reader::new(raw, base);
    let mut fields: Vec<OpaqueField> = Vec::new();
    while r.pos < raw.len() {
        let id_at = r.offset();
        let id = r.u16_le("opaque data field type")?;
        let size = usize::from(r.u16_le("opaque data field size")?);
        let value = r.take("opaque data field value", size)?;
        if id == OPAQUE_FWID && fields.iter().any(|f| f.id == OPAQUE_FWID) {
            return Err(unexpected(
                "opaque data field FWID",
                id_at,
                "a second FWID field".into(),
                "at most one".into(),
            ));
        }
        fields.push(OpaqueField {
            id,
            name: opaque_field_name(id),
            value: value.to_vec(),
        });
    }
    Ok(fields)
}

/// Decodes a report given either as hex text (NVIDIA's sample format; whitespace and an
/// optional `0x` prefix allowed) or as binary. Binary reports start with the SPDM version
/// byte 0x11, which is not a hex digit, so the two cannot be confused.
pub fn decode_report(input: &[u8]) -> Result<Vec<u8>, String> {
    let text: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let text = text
        .strip_prefix(b"0x")
        .or_else(|| text.strip_prefix(b"0X"))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err("report is empty".into());
    }
    if !text.iter().all(u8::is_ascii_hexdigit) {
        return match input.first() {
            Some(0x11) => Ok(input.to_vec()),
            _ => Err(
                "neither hex text nor a binary SPDM 1.1 report (which starts with byte 0x11)"
                    .into(),
            ),
        };
    }
    if text.len() / 2 > MAX_REPORT_LEN {
        return Err(format!(
            "report is {} bytes, more than the {MAX_REPORT_LEN} accepted",
            text.len() / 2
        ));
    }
    hex::decode(text).map_err(|e| format!("report is not valid hex: {e}"))
}

fn hex_ser<S: serde::Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v.as_ref()))
}
