//! Channel patterns of the connection token's `channels` claim.
//!
//! The syntax is deliberately small: a pattern is a channel name in which `*` stands for any
//! run of characters (the empty one too) other than `:`. Everything else matches itself;
//! there is no `?`, no character class and no escape (channel names cannot contain `*`).
//! Since `*` never crosses a `:`, a pattern never reaches into another namespace or another
//! segment of a name: `vip:*` grants `vip:gold` but neither `vip:gold:chat` nor `vip2:x`,
//! and `*` alone grants only channels without a namespace.
//!
//! Matching a segment takes at most the product of its pattern's and name's lengths (the
//! classic wildcard walk that backtracks only to the last `*`, never exponential), and names
//! are at most 255 bytes, so a hostile claim cannot make it slow.

/// Whether `name` (a valid channel name) matches `pattern`.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let mut patterns = pattern.split(':');
    let mut names = name.split(':');
    loop {
        match (patterns.next(), names.next()) {
            (None, None) => return true,
            (Some(p), Some(n)) if segment_matches(p.as_bytes(), n.as_bytes()) => {}
            _ => return false,
        }
    }
}

/// Whether any entry of a `channels` claim grants `name`.
pub(crate) fn any_matches(claim: &[Box<str>], name: &str) -> bool {
    claim.iter().any(|pattern| matches(pattern, name))
}

/// One `:`-free segment: `*` matches any run of bytes, everything else itself.
fn segment_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and how much of the name it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star_p, star_n)) = star {
            // Let the last `*` take one more byte and try again after it.
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact names match only themselves.
    #[test]
    fn names_match_themselves() {
        assert!(matches("vip:gold", "vip:gold"));
        assert!(!matches("vip:gold", "vip:golden"));
        assert!(!matches("vip:gold", "vip:gol"));
        assert!(!matches("vip", "vip:gold"));
    }

    /// `*` takes any run within one segment, and never a `:`.
    #[test]
    fn a_star_stays_within_its_segment() {
        assert!(matches("vip:*", "vip:gold"));
        assert!(matches("vip:*", "vip:"), "the empty run too");
        assert!(!matches("vip:*", "vip:gold:chat"));
        assert!(!matches("vip:*", "vipx:gold"));
        assert!(!matches("vip*", "vip:gold"), "a star does not cross into the next segment");
        assert!(matches("vip:*:*", "vip:gold:chat"));
        assert!(matches("*", "lobby"));
        assert!(!matches("*", "vip:gold"), "`*` alone grants no namespace");
        assert!(matches("team:a*-*z", "team:abc-xyz"));
        assert!(matches("team:*-chat", "team:red-chat"));
        assert!(!matches("team:*-chat", "team:red-chats"));
        assert!(matches("a:**b", "a:xxb"));
        assert!(matches("room:*a*a*a*", "room:aaa"));
        assert!(!matches("room:*a*a*a*", "room:aa"));
    }

    /// A pattern built to make naive backtracking explode is answered quickly.
    #[test]
    fn hostile_patterns_stay_fast() {
        let name = format!("x:{}", "a".repeat(250));
        let pattern = format!("x:{}b", "*a".repeat(120));
        let started = std::time::Instant::now();
        assert!(!matches(&pattern, &name));
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }

    /// A claim grants a name when any of its entries does.
    #[test]
    fn any_entry_of_a_claim_grants() {
        let claim: Vec<Box<str>> = vec!["vip:gold".into(), "team:*".into()];
        assert!(any_matches(&claim, "team:red"));
        assert!(any_matches(&claim, "vip:gold"));
        assert!(!any_matches(&claim, "vip:silver"));
        assert!(!any_matches(&[], "vip:gold"));
    }
}
