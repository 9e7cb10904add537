//! Channel patterns for the `channels` method: `*` matches any run of characters, `?`
//! one character, `\` escapes the next one.
//!
//! Matching backtracks only to the last `*`, so it takes at most
//! O(pattern × name) steps even for hostile patterns like `*a*a*a*b`.

/// A compiled glob.
#[derive(Debug)]
pub struct Pattern(Vec<Token>);

impl Pattern {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Self {
        Self(tokens(pattern))
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let pattern = &self.0;
        let name: Vec<char> = name.chars().collect();
        let (mut p, mut n) = (0, 0);
        // Where the last `*` was, and the name position it currently stands for.
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match pattern.get(p) {
                Some(Token::Any) => {
                    star = Some((p, n));
                    p += 1;
                }
                Some(Token::One) => {
                    p += 1;
                    n += 1;
                }
                Some(Token::Char(c)) if *c == name[n] => {
                    p += 1;
                    n += 1;
                }
                _ => match star {
                    // Let the last `*` swallow one more character and retry from there.
                    Some((sp, sn)) => {
                        star = Some((sp, sn + 1));
                        p = sp + 1;
                        n = sn + 1;
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|t| *t == Token::Any)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Any,
    One,
    Char(char),
}

fn tokens(pattern: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' => Token::Any,
            '?' => Token::One,
            '\\' => Token::Char(chars.next().unwrap_or('\\')),
            c => Token::Char(c),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        Pattern::new(pattern).matches(name)
    }

    #[test]
    fn globs() {
        assert!(matches("*", "anything"));
        assert!(matches("*", ""));
        assert!(matches("chat:*", "chat:1"));
        assert!(!matches("chat:*", "news:1"));
        assert!(matches("*:1", "chat:1"));
        assert!(matches("c?at:*", "chat:x"));
        assert!(!matches("c?at", "cat"));
        assert!(matches("user:4*2", "user:42"));
        assert!(matches("user:4*2", "user:4002"));
        assert!(!matches("user:4*2", "user:4003"));
        assert!(matches("a\\*", "a*"));
        assert!(!matches("a\\*", "ab"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
        assert!(matches("*a*a*a*a*b", &format!("{}b", "a".repeat(50))));
        assert!(!matches("*a*a*a*a*b", &"a".repeat(2000)));
    }
}
