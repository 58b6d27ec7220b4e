//! Known-answer tests: the RFC 6962 proof vectors of transparency-dev/merkle
//! and the C2SP signed-note example, against this crate's Merkle and note code.

use passerelle::audit::merkle::{Hash, leaf_hash, verify_consistency, verify_inclusion};
use passerelle::audit::note::{Note, NoteVerifier, key_id};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn b64(v: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or(""))
        .unwrap_or_default()
}

fn proof(v: &Value) -> Option<Vec<Hash>> {
    match v {
        Value::Null => Some(Vec::new()),
        Value::Array(items) => items.iter().map(|h| Hash::from_slice(&b64(h))).collect(),
        _ => None,
    }
}

#[test]
fn inclusion_vectors() {
    let all = files(&vectors().join("merkle/inclusion"));
    assert!(
        all.len() > 40,
        "expected the inclusion vectors, found {}",
        all.len()
    );
    for path in all {
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let want_err = v["wantErr"].as_bool().unwrap();
        let index = v["leafIdx"].as_u64().unwrap();
        let size = v["treeSize"].as_u64().unwrap();
        let result = match (
            Hash::from_slice(&b64(&v["leafHash"])),
            Hash::from_slice(&b64(&v["root"])),
            proof(&v["proof"]),
        ) {
            (Some(leaf), Some(root), Some(p)) => {
                verify_inclusion(index, size, &leaf, &p, &root).is_ok()
            }
            _ => false,
        };
        assert_eq!(result, !want_err, "{}", path.display());
    }
}

#[test]
fn consistency_vectors() {
    let all = files(&vectors().join("merkle/consistency"));
    assert!(
        all.len() > 40,
        "expected the consistency vectors, found {}",
        all.len()
    );
    for path in all {
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let want_err = v["wantErr"].as_bool().unwrap();
        let (s1, s2) = (v["size1"].as_u64().unwrap(), v["size2"].as_u64().unwrap());
        let result = match proof(&v["proof"]) {
            Some(p) => verify_consistency(s1, s2, &b64(&v["root1"]), &b64(&v["root2"]), &p).is_ok(),
            None => false,
        };
        assert_eq!(result, !want_err, "{}", path.display());
    }
}

#[test]
fn leaf_hash_of_empty_entry_matches_rfc6962() {
    // The single-leaf tree of the empty entry, as in the vectors' size-1 trees.
    assert_eq!(
        leaf_hash(b"").to_base64(),
        "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0="
    );
}

#[test]
fn signed_note_vector() {
    let text = std::fs::read_to_string(vectors().join("signed-note.txt")).unwrap();
    let vkey = text
        .lines()
        .find_map(|l| {
            l.trim_start_matches('#')
                .trim()
                .strip_prefix("example.com/foo+")
                .map(|k| format!("example.com/foo+{k}"))
        })
        .expect("verifier key line");
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "-----BEGIN NOTE-----")
        .skip(1)
        .take_while(|l| *l != "-----END NOTE-----")
        .collect();
    let note = format!("{}\n", body.join("\n"));
    let verifier = NoteVerifier::parse(&vkey).unwrap();
    assert_eq!(
        verifier.to_verifier_key(),
        vkey,
        "verifier key string must round-trip exactly"
    );
    assert_eq!(
        format!(
            "{:08x}",
            key_id("example.com/foo", verifier.verifying_key().as_bytes())
        ),
        "530d903a"
    );
    assert_eq!(
        Note::open(note.as_bytes(), &verifier).unwrap(),
        "This is an example message.\n"
    );
    // Any flipped byte of the text breaks it.
    let tampered = note.replacen("example message", "example massage", 1);
    assert!(Note::open(tampered.as_bytes(), &verifier).is_err());
    // The empty-tree root given beside the vector.
    assert_eq!(
        Hash::empty().to_base64(),
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    );
}
