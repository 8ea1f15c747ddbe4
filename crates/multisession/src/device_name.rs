//! A short, human name for the device behind a session ("Firefox 130 on
//! Linux", "curl 8", "Googlebot"), for a "where you are logged in" page.
//! The browser, system and crawler rules are Project Woothee's dataset,
//! through the `woothee` crate (a few microseconds a string, no data file
//! to load); what it does not know is named by the User-Agent's first
//! product token.

use std::sync::LazyLock;

use crate::Device;

/// The parser holds no state beyond its compiled rules: one for the process.
static PARSER: LazyLock<woothee::parser::Parser> = LazyLock::new(woothee::parser::Parser::new);

/// Longest name `describe` returns, in characters.
const MAX_NAME: usize = 40;

impl Device {
    /// A short name for this device, from its User-Agent: the browser and
    /// its major version on the system (`Firefox 130 on Linux`, `Safari 18
    /// on iPhone`), a tool or crawler by name (`curl 8`, `Googlebot`), an
    /// app by its product token (`MyApp 3 on iPhone`), else the User-Agent
    /// itself, cut to 40 characters; `Unknown device` without one.
    ///
    /// ```
    /// use multisession::Device;
    /// let laptop = Device::new(
    ///     Some("Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0".into()),
    ///     None,
    /// );
    /// assert_eq!(laptop.describe(), "Firefox 130 on Linux");
    /// assert_eq!(Device::new(Some("curl/8.5.0".into()), None).describe(), "curl 8");
    /// assert_eq!(Device::default().describe(), "Unknown device");
    /// ```
    pub fn describe(&self) -> String {
        let Some(ua) = self.user_agent.as_deref().map(str::trim).filter(|ua| !ua.is_empty()) else {
            return "Unknown device".to_owned();
        };
        let parsed = PARSER.parse(ua);
        let known = |s: &str| !s.is_empty() && s != "UNKNOWN";
        let os = parsed.as_ref().map(|p| p.os).filter(|os| known(os)).map(system);
        let name = match &parsed {
            Some(p) if p.category == "crawler" && known(p.name) => Some(p.name.to_owned()),
            Some(p) if p.browser_type == "browser" && known(p.name) => Some(with_major(browser(p.name), p.version)),
            _ => None,
        };
        let name = name.or_else(|| product(ua));
        let described = match (name, os) {
            (Some(name), Some(os)) => format!("{name} on {os}"),
            (Some(name), None) => name,
            (None, Some(os)) => format!("{os} device"),
            (None, None) => ua.to_owned(),
        };
        match printable(&described) {
            shown if shown.trim().is_empty() => "Unknown device".to_owned(),
            shown => shorten(&shown),
        }
    }
}

/// Woothee's browser names, as people say them.
fn browser(name: &str) -> &str {
    match name {
        "SamsungBrowser" => "Samsung Internet",
        other => other,
    }
}

/// Woothee's system names, as people say them. Windows 11 still says
/// `NT 10.0`, so no Windows version is named.
fn system(os: &str) -> &str {
    match os {
        "Mac OSX" | "Mac OS" => "macOS",
        os if os.starts_with("Windows") && !os.contains("Phone") => "Windows",
        other => other,
    }
}

/// `name` followed by the major version `version` starts with, if any.
fn with_major(name: &str, version: &str) -> String {
    let major: String = version.chars().take_while(char::is_ascii_digit).take(5).collect();
    if major.is_empty() { name.to_owned() } else { format!("{name} {major}") }
}

/// The User-Agent's first product token (`curl/8.5.0` → `curl 8`), when it
/// is one: a name of letters, digits, `-`, `_` or `.`, not the `Mozilla`
/// every browser sends.
fn product(ua: &str) -> Option<String> {
    let token = ua.split_whitespace().next()?;
    let (name, version) = token.split_once('/').unwrap_or((token, ""));
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    (plain && !name.is_empty() && name.len() <= 30 && name != "Mozilla").then(|| with_major(name, version))
}

/// `text` without control characters and the invisible marks that reorder
/// text (bidirectional overrides and isolates), which a client could use to
/// make its device read as another on a devices page.
fn printable(text: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    text.chars().filter(|&c| !hidden(c)).collect()
}

/// `text` cut to [`MAX_NAME`] characters, with an ellipsis when cut.
fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_NAME {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_NAME - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use crate::Device;

    fn named(ua: &str) -> String {
        Device::new(Some(ua.to_owned()), None).describe()
    }

    /// Real User-Agents of browsers, phones, tools and crawlers, as sent in
    /// late 2024.
    #[test]
    fn real_world_user_agents_get_the_names_people_use() {
        for (ua, expected) in [
            ("Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0", "Firefox 130 on Linux"),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 \
                 Safari/537.36",
                "Chrome 131 on Windows",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 \
                 Safari/537.36 Edg/131.0.2903.86",
                "Edge 131 on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                 Version/18.1 Safari/605.1.15",
                "Safari 18 on macOS",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                 Version/18.1 Mobile/15E148 Safari/604.1",
                "Safari 18 on iPhone",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                 CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
                "Chrome 131 on iPhone",
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 \
                 Mobile/15E148 Safari/604.1",
                "Safari 17 on iPad",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) \
                 Chrome/131.0.6778.81 Mobile Safari/537.36",
                "Chrome 131 on Android",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) \
                 SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
                "Samsung Internet 26 on Android",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 \
                 Safari/537.36 OPR/114.0.0.0",
                "Opera 114 on Windows",
            ),
            (
                "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 \
                 Safari/537.36",
                "Chrome 131 on ChromeOS",
            ),
            ("curl/8.5.0", "curl 8"),
            ("Wget/1.21.3", "Wget 1"),
            ("python-requests/2.32.3", "python-requests 2"),
            ("okhttp/4.12.0", "okhttp 4"),
            ("MyApp/3.2 (iPhone; iOS 17.5; Scale/3.00)", "MyApp 3 on iPhone"),
            ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Googlebot"),
            ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bingbot"),
        ] {
            assert_eq!(named(ua), expected, "{ua}");
        }
    }

    #[test]
    fn empty_garbage_and_overlong_user_agents_get_a_short_name_and_no_panic() {
        assert_eq!(Device::default().describe(), "Unknown device");
        assert_eq!(named("   "), "Unknown device");
        assert_eq!(named("garbage 😀"), "garbage");
        let long = named(&"é".repeat(300));
        assert_eq!(long.chars().count(), 40, "{long}");
        assert!(long.ends_with('…'));
        assert_eq!(named("(evil) \u{202E}moc.knab\u{202C} \u{7}x"), "(evil) moc.knab x");
        assert_eq!(named("\u{202E}\u{7}"), "Unknown device");
        for ua in ["/", "/1", "a/", "Mozilla/5.0", "\u{0}\u{1}", "(((((", "Firefox/", "Firefox/99999999999999999"] {
            let name = named(ua);
            assert!(!name.is_empty() && name.chars().count() <= 40, "{ua:?}: {name:?}");
        }
    }
}
