//! OCSP responses made by the tests (RFC 6960 basic responses, ECDSA P-384), shared by the
//! verifier's reference-bundle tests and its benchmark.
#![allow(dead_code)]

use std::time::Duration;

use der::asn1::{BitString, GeneralizedTime, Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use jiff::Timestamp;
use rcgen::KeyPair;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair};
use x509_cert::Certificate;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspResponse, OcspResponseStatus,
    ResponderId, ResponseBytes, ResponseData, SingleResponse, Version,
};

pub struct Ocsp<'a> {
    pub cert: &'a [u8],
    pub issuer: &'a [u8],
    pub signer: &'a KeyPair,
    pub status: CertStatus,
    pub this_update: &'a str,
    pub next_update: Option<&'a str>,
    /// A delegated responder certificate included in the response, named as responder.
    pub responder: Option<&'a [u8]>,
}

pub fn gt(t: &str) -> OcspGeneralizedTime {
    let t: Timestamp = t.parse().unwrap();
    OcspGeneralizedTime(
        GeneralizedTime::from_unix_duration(Duration::from_secs(t.as_second() as u64)).unwrap(),
    )
}

pub fn good() -> CertStatus {
    CertStatus::Good(Null)
}

pub fn ocsp_response(o: &Ocsp<'_>) -> Vec<u8> {
    let cert = Certificate::from_der(o.cert).unwrap();
    let issuer = Certificate::from_der(o.issuer).unwrap();
    let sha256 = |b: &[u8]| {
        OctetString::new(
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .to_vec(),
        )
        .unwrap()
    };
    let cert_id = CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1"),
            parameters: None,
        },
        issuer_name_hash: sha256(&issuer.tbs_certificate.subject.to_der().unwrap()),
        issuer_key_hash: sha256(
            issuer
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        ),
        serial_number: cert.tbs_certificate.serial_number.clone(),
    };
    let responder_name = match o.responder {
        Some(r) => Certificate::from_der(r).unwrap().tbs_certificate.subject,
        None => issuer.tbs_certificate.subject.clone(),
    };
    let tbs = ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByName(responder_name),
        produced_at: gt(o.this_update),
        responses: vec![SingleResponse {
            cert_id,
            cert_status: o.status,
            this_update: gt(o.this_update),
            next_update: o.next_update.map(gt),
            single_extensions: None,
        }],
        response_extensions: None,
    };
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P384_SHA384_ASN1_SIGNING,
        o.signer.serialized_der(),
        &rng,
    )
    .unwrap();
    let sig = key.sign(&rng, &tbs.to_der().unwrap()).unwrap();
    let basic = BasicOcspResponse {
        tbs_response_data: tbs,
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3"),
            parameters: None,
        },
        signature: BitString::from_bytes(sig.as_ref()).unwrap(),
        certs: o.responder.map(|r| vec![Certificate::from_der(r).unwrap()]),
    };
    OcspResponse {
        response_status: OcspResponseStatus::Successful,
        response_bytes: Some(ResponseBytes {
            response_type: ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1"),
            response: OctetString::new(basic.to_der().unwrap()).unwrap(),
        }),
    }
    .to_der()
    .unwrap()
}
