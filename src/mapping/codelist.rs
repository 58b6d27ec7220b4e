//! Code lists: the tables that turn a partner's codes and spellings into canonical values.
//!
//! This module owns the shared country list (built from `codelists/countries.csv` and the
//! programme's `codelists/aliases.toml`), the lists a mapping file declares for itself, and the
//! normalisation that makes a lookup insensitive to accents, case, hyphens and apostrophes
//! ("Sénégalaise", "SENEGALAISE" and "senegalaise" are one key). It does no I/O of its own
//! beyond parsing the texts it is given.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use unicode_normalization::UnicodeNormalization;

/// The name of the shared list that reads any spelling of a country into ISO 3166-1 alpha-3.
pub const COUNTRY: &str = "country";
/// The shared list from alpha-3 to alpha-2.
pub const COUNTRY_ALPHA2: &str = "country.alpha2";
/// The shared list from alpha-3 to the French feminine demonym ("SEN" to "Sénégalaise").
pub const COUNTRY_DEMONYM_FR_F: &str = "country.demonym_fr_f";

/// Why a code list could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CodeListError {
    /// The countries CSV is malformed.
    #[error("countries.csv line {line}: {message}")]
    Csv {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The aliases file is not TOML of the expected shape.
    #[error("aliases.toml: {message}")]
    AliasesSyntax {
        /// What is wrong, without the line the TOML library would quote.
        message: String,
        /// Where in the file's text, when the TOML library says.
        span: Option<std::ops::Range<usize>>,
    },
    /// The aliases file says what cannot be.
    #[error("aliases.toml: {0}")]
    Aliases(String),
}

/// One code list: normalised keys to values, and the exact table for reverse lookups.
#[derive(Debug, Clone, Default)]
pub struct CodeList {
    normalised: HashMap<String, String>,
    /// Folded keys that stand for several values, with those values (sorted): left out of
    /// look-ups, and named when a message uses one.
    ambiguous: HashMap<String, Vec<String>>,
    exact: BTreeMap<String, String>,
}

/// Two keys of a list that fold to one look-up key (3.3 of the mapping guide) with different
/// values: the first key in the list's order, and the second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldClash {
    /// The key met first.
    pub first: String,
    /// The key that folds to the same text with another value.
    pub second: String,
}

/// The pairs of keys that fold to one look-up key with different values, in the pairs' order.
pub fn fold_clashes<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<FoldClash> {
    let mut seen: HashMap<String, (&str, &str)> = HashMap::new();
    let mut clashes = Vec::new();
    for (key, value) in pairs {
        let (first, existing) = *seen.entry(normalise(key)).or_insert((key, value));
        if existing != value {
            clashes.push(FoldClash {
                first: first.to_owned(),
                second: key.to_owned(),
            });
        }
    }
    clashes
}

impl CodeList {
    /// Builds a list from exact key/value pairs. Keys that normalise to the same form with
    /// different values are ambiguous and are left out of normalised lookups.
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut list = Self::default();
        for (key, value) in pairs {
            let normal = normalise(&key);
            if let Some(values) = list.ambiguous.get_mut(&normal) {
                if !values.contains(&value) {
                    values.push(value.clone());
                    values.sort();
                }
            } else {
                match list.normalised.get(&normal) {
                    Some(existing) if *existing != value => {
                        let mut values = vec![existing.clone(), value.clone()];
                        values.sort();
                        list.normalised.remove(&normal);
                        list.ambiguous.insert(normal, values);
                    }
                    _ => {
                        list.normalised.insert(normal, value.clone());
                    }
                }
            }
            list.exact.insert(key, value);
        }
        list
    }

    /// Adds a key that settles its folded form, whatever the list had for it (an alias).
    fn settle(&mut self, key: &str, value: &str) {
        let normal = normalise(key);
        self.ambiguous.remove(&normal);
        self.normalised.insert(normal, value.to_owned());
        self.exact.insert(key.to_owned(), value.to_owned());
    }

    /// Looks a partner's spelling up, insensitive to accents, case and punctuation.
    pub fn lookup(&self, key: &str) -> Option<&str> {
        self.normalised.get(&normalise(key)).map(String::as_str)
    }

    /// The values a spelling may stand for when the list holds it for several (sorted), so
    /// that a refusal can say why a key that is visibly in the list was not read.
    pub fn ambiguous_values(&self, key: &str) -> Option<&[String]> {
        self.ambiguous.get(&normalise(key)).map(Vec::as_slice)
    }

    /// Looks an exact key up, as written in the list.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.exact.get(key).map(String::as_str)
    }

    /// Finds the key whose value is `value`, when exactly one key has it.
    pub fn reverse(&self, value: &str) -> Option<&str> {
        let mut keys = self
            .exact
            .iter()
            .filter(|(_, v)| v.as_str() == value)
            .map(|(k, _)| k.as_str());
        let first = keys.next()?;
        keys.next().is_none().then_some(first)
    }

    /// The number of exact entries.
    pub fn len(&self) -> usize {
        self.exact.len()
    }

    /// True when the list has no entry.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }
}

/// Folds a spelling to its lookup key: no accents, upper case, runs of anything that is not a
/// letter or digit become one space.
pub fn normalise(text: &str) -> String {
    if text.is_ascii() {
        // Most codes and names are ASCII: no decomposition needed.
        let mut out = String::with_capacity(text.len());
        for word in text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            if !out.is_empty() {
                out.push(' ');
            }
            out.extend(word.chars().map(|c| c.to_ascii_uppercase()));
        }
        return out;
    }
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for character in text.nfd() {
        if unicode_normalization::char::is_combining_mark(character) {
            continue;
        }
        if character.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.extend(character.to_uppercase());
        } else {
            pending_space = true;
        }
    }
    out
}

/// The shared country lists, built once from the project's code list files.
#[derive(Debug, Clone)]
pub struct CountryLists {
    /// Any spelling to alpha-3.
    pub any_to_alpha3: CodeList,
    /// Alpha-3 to alpha-2.
    pub alpha3_to_alpha2: CodeList,
    /// Alpha-3 to the French feminine demonym.
    pub alpha3_to_demonym_fr_f: CodeList,
}

impl CountryLists {
    /// Builds the lists from the text of `countries.csv` and `aliases.toml`.
    ///
    /// The CSV has the header `cca2,cca3,ccn3,name_en,name_fr_common,name_fr_official,
    /// demonym_fr_m,demonym_fr_f`; official names may contain commas inside quotes.
    pub fn build(countries_csv: &str, aliases_toml: &str) -> Result<Self, CodeListError> {
        let mut any = Vec::new();
        let mut alpha2 = Vec::new();
        let mut demonyms = Vec::new();
        let mut lines = countries_csv.lines().enumerate();
        let header = lines.next().map(|(_, line)| line).unwrap_or_default();
        if !header.starts_with(
            "cca2,cca3,ccn3,name_en,name_fr_common,name_fr_official,demonym_fr_m,demonym_fr_f",
        ) {
            return Err(CodeListError::Csv {
                line: 1,
                message: "unexpected header".into(),
            });
        }
        for (index, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let fields = split_csv_line(line);
            let [
                cca2,
                cca3,
                _ccn3,
                name_en,
                fr_common,
                fr_official,
                dem_m,
                dem_f,
            ] = fields.as_slice()
            else {
                return Err(CodeListError::Csv {
                    line: index + 1,
                    message: format!("expected 8 fields, found {}", fields.len()),
                });
            };
            if cca3.len() != 3 || !cca3.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(CodeListError::Csv {
                    line: index + 1,
                    message: format!("{cca3:?} is not an alpha-3 code"),
                });
            }
            for key in [cca2, cca3, name_en, fr_common, fr_official, dem_m, dem_f] {
                if !key.is_empty() {
                    any.push((key.clone(), cca3.clone()));
                }
            }
            alpha2.push((cca3.clone(), cca2.clone()));
            demonyms.push((cca3.clone(), dem_f.clone()));
        }
        let aliases: BTreeMap<String, BTreeMap<String, String>> = toml::from_str(aliases_toml)
            .map_err(|error: toml::de::Error| CodeListError::AliasesSyntax {
                message: error.message().trim_end().to_owned(),
                span: error.span(),
            })?;
        let codes: BTreeSet<&str> = alpha2.iter().map(|(alpha3, _)| alpha3.as_str()).collect();
        for (table, entries) in &aliases {
            let keys_are_codes = match table.as_str() {
                COUNTRY => false,
                COUNTRY_DEMONYM_FR_F => true,
                other => {
                    return Err(CodeListError::Aliases(format!(
                        "[{other}] is no shared list (only [{COUNTRY}] and \
                         [\"{COUNTRY_DEMONYM_FR_F}\"])"
                    )));
                }
            };
            // An alias is a decision: two that fold to one spelling with different countries,
            // or one that names no country, would be a decision no one can read back.
            if let Some(clash) =
                fold_clashes(entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))).first()
            {
                return Err(CodeListError::Aliases(format!(
                    "[{table}]: {:?} and {:?} are one spelling once accents, case and \
                     punctuation are ignored, with different values",
                    clash.first, clash.second
                )));
            }
            for (key, value) in entries {
                let code = if keys_are_codes { key } else { value };
                if !codes.contains(code.as_str()) {
                    return Err(CodeListError::Aliases(format!(
                        "[{table}]: {code:?} (of {key:?}) is not an alpha-3 code of countries.csv"
                    )));
                }
            }
        }
        let mut any = CodeList::from_pairs(any);
        for (key, value) in aliases.get(COUNTRY).into_iter().flatten() {
            // Aliases are the programme's own decisions: they override ambiguous names.
            any.settle(key, value);
        }
        // What the gateway writes, it reads back: a demonym the aliases settle for a country
        // reads as that country, and one that reads as another is refused.
        for (code, demonym) in aliases.get(COUNTRY_DEMONYM_FR_F).into_iter().flatten() {
            match any.lookup(demonym) {
                Some(read) if read != code => {
                    return Err(CodeListError::Aliases(format!(
                        "[\"{COUNTRY_DEMONYM_FR_F}\"]: {demonym:?} is written for {code} \
                         but reads as {read}"
                    )));
                }
                Some(_) => {}
                None => any.settle(demonym, code),
            }
        }
        let mut demonyms = CodeList::from_pairs(demonyms);
        for (key, value) in aliases.get(COUNTRY_DEMONYM_FR_F).into_iter().flatten() {
            demonyms.settle(key, value);
        }
        Ok(Self {
            any_to_alpha3: any,
            alpha3_to_alpha2: CodeList::from_pairs(alpha2),
            alpha3_to_demonym_fr_f: demonyms,
        })
    }
}

/// Splits one CSV line on commas, honouring double quotes.
fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(character) = chars.next() {
        match character {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            other => field.push(other),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "cca2,cca3,ccn3,name_en,name_fr_common,name_fr_official,demonym_fr_m,demonym_fr_f\n\
        SN,SEN,686,Senegal,Sénégal,République du Sénégal,Sénégalais,Sénégalaise\n\
        CD,COD,180,DR Congo,Congo (Rép. dém.),République démocratique du Congo,Congolais,Congolaise\n\
        CG,COG,178,Congo,Congo,République du Congo,Congolais,Congolaise\n\
        CI,CIV,384,Ivory Coast,Côte d'Ivoire,\"République de Côte d' Ivoire\",Ivoirien,Ivoirienne\n";
    const ALIASES: &str = "[country]\n\"Congo RDC\" = \"COD\"\n";

    #[test]
    fn normalises_accents_case_and_punctuation() {
        assert_eq!(normalise("Sénégalaise"), "SENEGALAISE");
        assert_eq!(normalise(" cote--d'ivoire "), "COTE D IVOIRE");
        assert_eq!(normalise("  COTE D'IVOIRE "), "COTE D IVOIRE");
        assert_eq!(normalise("Guinée-Conakry"), normalise("GUINEE CONAKRY"));
    }

    #[test]
    fn countries_read_every_spelling() {
        let lists = CountryLists::build(CSV, ALIASES).unwrap();
        for spelling in [
            "Sénégalaise",
            "SENEGALAISE",
            "senegalais",
            "SN",
            "SEN",
            "Sénégal",
        ] {
            assert_eq!(
                lists.any_to_alpha3.lookup(spelling),
                Some("SEN"),
                "{spelling}"
            );
        }
        assert_eq!(lists.any_to_alpha3.lookup("Côte d’Ivoire"), Some("CIV"));
        assert_eq!(
            lists.any_to_alpha3.lookup("Congolaise"),
            None,
            "ambiguous between the two Congos"
        );
        assert_eq!(
            lists.any_to_alpha3.ambiguous_values("congolaise"),
            Some(&["COD".to_owned(), "COG".to_owned()][..])
        );
        assert_eq!(lists.any_to_alpha3.ambiguous_values("congo rdc"), None);
        assert_eq!(lists.any_to_alpha3.lookup("congo rdc"), Some("COD"));
        assert_eq!(lists.alpha3_to_alpha2.get("CIV"), Some("CI"));
        assert_eq!(lists.alpha3_to_demonym_fr_f.get("SEN"), Some("Sénégalaise"));
    }

    /// A demonym written for one of two countries that share it reads back as that country.
    #[test]
    fn a_demonym_written_reads_back_as_its_country() {
        let written = "[\"country.demonym_fr_f\"]\n\"COD\" = \"Congolaise (RDC)\"\n";
        let lists = CountryLists::build(CSV, written).unwrap();
        assert_eq!(lists.any_to_alpha3.lookup("Congolaise (RDC)"), Some("COD"));
        assert_eq!(lists.any_to_alpha3.lookup("congolaise rdc"), Some("COD"));
        let misread = "[country]\n\"Congolaise RDC\" = \"COG\"\n\
            [\"country.demonym_fr_f\"]\n\"COD\" = \"Congolaise (RDC)\"\n";
        let error = CountryLists::build(CSV, misread).unwrap_err().to_string();
        assert!(
            error.contains("\"Congolaise (RDC)\" is written for COD but reads as COG"),
            "{error}"
        );
    }

    /// Over the project's own lists: every country's demonym, as written to the consulates,
    /// reads back as that country.
    #[test]
    fn every_demonym_the_gateway_writes_reads_back() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/codelists");
        let csv = std::fs::read_to_string(dir.join("countries.csv")).unwrap();
        let aliases = std::fs::read_to_string(dir.join("aliases.toml")).unwrap();
        let lists = CountryLists::build(&csv, &aliases).unwrap();
        let mut misread = Vec::new();
        for (code, demonym) in &lists.alpha3_to_demonym_fr_f.exact {
            if !demonym.is_empty() && lists.any_to_alpha3.lookup(demonym) != Some(code.as_str()) {
                misread.push(format!(
                    "{code}: {demonym:?} reads as {:?}",
                    lists.any_to_alpha3.lookup(demonym)
                ));
            }
        }
        assert!(misread.is_empty(), "{misread:#?}");
    }

    #[test]
    fn reverse_needs_a_unique_key() {
        let list = CodeList::from_pairs([
            ("A".into(), "x".into()),
            ("B".into(), "x".into()),
            ("C".into(), "y".into()),
        ]);
        assert_eq!(list.reverse("y"), Some("C"));
        assert_eq!(list.reverse("x"), None);
    }

    #[test]
    fn aliases_that_clash_once_folded_or_name_no_country_are_refused() {
        let clash = "[country]\n\"Guinée Conakry\" = \"GIN\"\n\"guinee conakry\" = \"GNB\"\n";
        let error = CountryLists::build(CSV, clash).unwrap_err().to_string();
        assert!(
            error.contains("\"Guinée Conakry\" and \"guinee conakry\""),
            "{error}"
        );
        let unknown = "[country]\n\"Atlante\" = \"ATL\"\n";
        let error = CountryLists::build(CSV, unknown).unwrap_err().to_string();
        assert!(
            error.contains("\"ATL\" (of \"Atlante\") is not an alpha-3 code"),
            "{error}"
        );
        let table = "[countries]\n\"Atlante\" = \"SEN\"\n";
        let error = CountryLists::build(CSV, table).unwrap_err().to_string();
        assert!(error.contains("[countries] is no shared list"), "{error}");
        // The same spelling twice for one country is no clash.
        let same = "[country]\n\"Congo RDC\" = \"COD\"\n\"congo-rdc\" = \"COD\"\n";
        assert!(CountryLists::build(CSV, same).is_ok());
        assert_eq!(
            fold_clashes([("PLANIFIE", "planned"), ("Planifié", "done"), ("X", "x")]),
            [FoldClash {
                first: "PLANIFIE".into(),
                second: "Planifié".into()
            }]
        );
    }
}
