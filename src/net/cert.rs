//! The subject common name (CN) of an X.509 certificate, read straight from its DER: just enough of
//! the structure to walk `Certificate -> tbsCertificate -> subject` and find the `2.5.4.3` attribute.
//! Pure; no verification here (rustls has verified the chain before anyone asks for the name).

/// DER tags used on the way to the subject.
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const EXPLICIT_VERSION: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

/// One DER element: `(tag, content, rest after it)`; `None` when truncated or longer than 4 GiB.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The content of the element at the front of `input` when its tag is `want`.
fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, content, rest) = element(input)?;
    (tag == want).then_some((content, rest))
}

/// A directory string as text: UTF8String, PrintableString, IA5String or BMPString (UTF-16BE).
fn directory_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_owned),
        0x1e if value.len().is_multiple_of(2) => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// The subject's common name; the last one when there are several (the most specific, as in
/// RFC 4514's order). `None` when the subject has no CN or the DER cannot be read.
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    let (cert, _) = expect(cert_der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    let (tag, _, after_version) = element(rest)?;
    if tag == EXPLICIT_VERSION {
        rest = after_version;
    }
    // serialNumber, signature algorithm, issuer, validity
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (mut rdns, _) = expect(rest, SEQUENCE)?;
    let mut found = None;
    while !rdns.is_empty() {
        let (mut attrs, next) = expect(rdns, SET)?;
        rdns = next;
        while !attrs.is_empty() {
            let (attr, next) = expect(attrs, SEQUENCE)?;
            attrs = next;
            let (oid, value) = expect(attr, OID)?;
            if oid == OID_COMMON_NAME {
                let (tag, text, _) = element(value)?;
                found = Some(directory_string(tag, text)?);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: rcgen::DistinguishedName) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_common_name_among_other_attributes_found() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Ferrite test");
        dn.push(rcgen::DnType::CommonName, "batch-client-7");
        assert_eq!(
            subject_common_name(&cert_with(dn)).as_deref(),
            Some("batch-client-7")
        );
    }

    #[test]
    fn subject_common_name_printable_and_utf8_strings_decoded() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            rcgen::DnValue::PrintableString("ci".try_into().unwrap()),
        );
        assert_eq!(subject_common_name(&cert_with(dn)).as_deref(), Some("ci"));
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "zürich-ü");
        assert_eq!(
            subject_common_name(&cert_with(dn)).as_deref(),
            Some("zürich-ü")
        );
    }

    #[test]
    fn subject_common_name_missing_or_garbage_none() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "no cn here");
        assert_eq!(subject_common_name(&cert_with(dn)), None);
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "cut");
        let der = cert_with(dn);
        for cut in [1, 10, der.len() / 2, der.len() - 1] {
            // a truncated certificate never panics; the outer length no longer fits
            assert_eq!(subject_common_name(&der[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn subject_common_name_issuer_cn_not_taken_for_subject() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "the CA");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "leaf");
        let key = rcgen::KeyPair::generate().unwrap();
        let der = leaf.signed_by(&key, &issuer).unwrap().der().to_vec();
        assert_eq!(subject_common_name(&der).as_deref(), Some("leaf"));
    }
}
