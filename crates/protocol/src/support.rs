//! Small helpers every service uses the same way.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

use serde::{Deserialize, Deserializer};

/// Reads a list of strings, or one string of comma-separated items, which is the form an
/// environment variable gives (`HERALD_PUBLISHER__API_KEYS=key1,key2`). For
/// `#[serde(deserialize_with = "...")]` on configuration lists.
pub fn list_or_comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Items {
        List(Vec<String>),
        One(String),
    }
    Ok(match Items::deserialize(d)? {
        Items::List(items) => items,
        Items::One(s) => s.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect(),
    })
}

/// Gives memory back once a map has emptied out to a quarter of its capacity, so a crowd of
/// channels, connections or users that came and went does not pin its peak size forever.
pub fn shrink<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// [`shrink`] for sets.
pub fn shrink_set<K: Eq + Hash, S: BuildHasher>(set: &mut HashSet<K, S>) {
    if set.capacity() > 64 && set.len() < set.capacity() / 4 {
        set.shrink_to(set.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_come_as_lists_or_comma_separated() {
        #[derive(Deserialize)]
        struct C {
            #[serde(deserialize_with = "list_or_comma_separated")]
            keys: Vec<String>,
        }
        let c: C = serde_json::from_str(r#"{"keys": "a, b,,c"}"#).unwrap();
        assert_eq!(c.keys, ["a", "b", "c"]);
        let c: C = serde_json::from_str(r#"{"keys": ["a,b"]}"#).unwrap();
        assert_eq!(c.keys, ["a,b"]);
    }

    #[test]
    fn emptied_maps_give_memory_back() {
        let mut map: HashMap<u32, u32> = (0..1000).map(|i| (i, i)).collect();
        map.retain(|k, _| *k < 10);
        shrink(&mut map);
        assert!(map.capacity() < 100);
    }
}
