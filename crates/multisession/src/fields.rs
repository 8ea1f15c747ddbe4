//! Which session part keeps which key: [`Fields`] rules, decided once at
//! start-up.

/// The keys one session part keeps.
///
/// `Include` and `Exclude` lists, and `All`, are explicit; `Auto` takes every
/// key that no explicit rule claims. A key claimed by two explicit rules is
/// written to both.
///
/// ```
/// use multisession::Fields;
///
/// let csrf = Fields::include(["csrf_token"]);
/// let rest = Fields::Auto;
/// assert_eq!(csrf, Fields::Include(vec!["csrf_token".to_owned()]));
/// # let _ = rest;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fields {
    /// Every key (the default, and the only sensible rule for a lone part).
    #[default]
    All,
    /// Only these keys.
    Include(Vec<String>),
    /// Every key but these.
    Exclude(Vec<String>),
    /// Every key no `All`, `Include` or `Exclude` rule claims.
    Auto,
}

impl Fields {
    /// `Include` from any list of names.
    ///
    /// ```
    /// let fields = multisession::Fields::include(["user_id", "user_data"]);
    /// # let _ = fields;
    /// ```
    pub fn include<I: IntoIterator<Item = S>, S: Into<String>>(keys: I) -> Self {
        Self::Include(keys.into_iter().map(Into::into).collect())
    }

    /// `Exclude` from any list of names.
    ///
    /// ```
    /// let fields = multisession::Fields::exclude(["csrf_token"]);
    /// # let _ = fields;
    /// ```
    pub fn exclude<I: IntoIterator<Item = S>, S: Into<String>>(keys: I) -> Self {
        Self::Exclude(keys.into_iter().map(Into::into).collect())
    }

    /// Whether this rule claims `key` outright (`Auto` never does).
    fn claims(&self, key: &str) -> bool {
        match self {
            Self::All => true,
            Self::Include(keys) => keys.iter().any(|k| k == key),
            Self::Exclude(keys) => !keys.iter().any(|k| k == key),
            Self::Auto => false,
        }
    }

    /// Whether `key` is named in an `Include` list.
    pub(crate) fn names(&self, key: &str) -> bool {
        matches!(self, Self::Include(keys) if keys.iter().any(|k| k == key))
    }
}

/// The rules of every part, in order.
#[derive(Clone, Debug)]
pub(crate) struct Routing {
    rules: Vec<Fields>,
}

impl Routing {
    pub(crate) fn new(rules: Vec<Fields>) -> Self {
        Self { rules }
    }

    /// The parts that keep `key`, in configuration order: those whose rule
    /// claims it, or else the `Auto` parts.
    /// (Allocation-free: it runs for every key a request reads or loads.)
    pub(crate) fn owners<'a>(&'a self, key: &'a str) -> impl Iterator<Item = usize> + Send + 'a {
        let claimed = self.rules.iter().any(|rule| rule.claims(key));
        (0..self.rules.len())
            .filter(move |&i| if claimed { self.rules[i].claims(key) } else { self.rules[i] == Fields::Auto })
    }

    /// Whether part `part` keeps `key`.
    pub(crate) fn owns(&self, part: usize, key: &str) -> bool {
        self.owners(key).any(|owner| owner == part)
    }

    /// Why an `Auto` part can never receive a key, if it cannot: the index
    /// of the part that leaves it nothing.
    pub(crate) fn starved_auto(&self) -> Option<(usize, usize)> {
        let auto = self.rules.iter().position(|r| *r == Fields::Auto)?;
        if let Some(all) = self.rules.iter().position(|r| *r == Fields::All) {
            return Some((auto, all));
        }
        // With `Exclude` rules, only keys every one of them excludes (and no
        // `Include` names) are left for `Auto`.
        let mut excludes = self.rules.iter().enumerate().filter_map(|(i, r)| match r {
            Fields::Exclude(keys) => Some((i, keys)),
            _ => None,
        });
        let (first, keys) = excludes.next()?;
        let others: Vec<_> = excludes.collect();
        let left = keys.iter().any(|k| others.iter().all(|(_, o)| o.contains(k)) && self.owns(auto, k));
        if left { None } else { Some((auto, first)) }
    }

    /// Keys an `Exclude` list names that no part keeps.
    pub(crate) fn homeless(&self) -> Option<(usize, &str)> {
        self.rules.iter().enumerate().find_map(|(i, rule)| match rule {
            Fields::Exclude(keys) => keys.iter().find(|k| self.owners(k).next().is_none()).map(|k| (i, k.as_str())),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(rules: &[Fields]) -> Routing {
        Routing::new(rules.to_vec())
    }

    /// Every rule combination: who keeps `a` (named by part 0), `b` (named by
    /// parts 0 and 1: a collision) and `z` (named by nobody).
    #[test]
    fn routing_table() {
        use Fields::*;
        let inc = |keys: &[&str]| Fields::include(keys.iter().copied());
        let exc = |keys: &[&str]| Fields::exclude(keys.iter().copied());
        let table: Vec<(Vec<Fields>, [Vec<usize>; 3])> = vec![
            (vec![All], [vec![0], vec![0], vec![0]]),
            (vec![Auto], [vec![0], vec![0], vec![0]]),
            (vec![inc(&["a", "b"])], [vec![0], vec![0], vec![]]),
            (vec![exc(&["z"])], [vec![0], vec![0], vec![]]),
            (vec![inc(&["a", "b"]), inc(&["b"])], [vec![0], vec![0, 1], vec![]]),
            (vec![inc(&["a", "b"]), inc(&["b"]), Auto], [vec![0], vec![0, 1], vec![2]]),
            (vec![inc(&["a", "b"]), Auto, inc(&["b"])], [vec![0], vec![0, 2], vec![1]]),
            (vec![inc(&["a", "b"]), All], [vec![0, 1], vec![0, 1], vec![1]]),
            (vec![inc(&["a", "b"]), exc(&["a", "b"])], [vec![0], vec![0], vec![1]]),
            (vec![inc(&["a"]), exc(&["z"])], [vec![0, 1], vec![1], vec![]]),
            (vec![exc(&["a", "z"]), Auto], [vec![1], vec![0], vec![1]]),
            (vec![exc(&["a"]), exc(&["b"])], [vec![1], vec![0], vec![0, 1]]),
            (vec![Auto, Auto], [vec![0, 1], vec![0, 1], vec![0, 1]]),
        ];
        for (rules, expected) in table {
            let r = routing(&rules);
            let got = ["a", "b", "z"].map(|key| r.owners(key).collect::<Vec<_>>());
            assert_eq!(got, expected, "rules {rules:?}");
        }
    }

    #[test]
    fn auto_beside_all_or_disjoint_excludes_is_starved() {
        use Fields::*;
        assert_eq!(routing(&[All, Auto]).starved_auto(), Some((1, 0)));
        assert_eq!(routing(&[Fields::exclude(["a"]), Fields::exclude(["b"]), Auto]).starved_auto(), Some((2, 0)));
        assert_eq!(routing(&[Fields::exclude(["a"]), Auto]).starved_auto(), None);
        assert_eq!(routing(&[Fields::exclude(["a"]), Fields::include(["a"]), Auto]).starved_auto(), Some((2, 0)));
        assert_eq!(routing(&[Fields::include(["a"]), Auto]).starved_auto(), None);
    }

    #[test]
    fn an_excluded_key_nobody_keeps_is_homeless() {
        assert_eq!(routing(&[Fields::exclude(["a"])]).homeless(), Some((0, "a")));
        assert_eq!(routing(&[Fields::exclude(["a"]), Fields::include(["a"])]).homeless(), None);
        assert_eq!(routing(&[Fields::exclude(["a"]), Fields::Auto]).homeless(), None);
    }
}
