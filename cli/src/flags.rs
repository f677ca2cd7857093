//! Checking flag values while clap parses them, so that a bad value is a
//! usage error like an unknown flag: a message naming the flag, and exit
//! code 2, before anything connects or starts.
//!
//! Only the shape is checked here (`HOST:PORT`, a number in range); whether
//! something listens there is learned by connecting, and is exit code 1 (or
//! the command's own code).

/// Checks a `HOST:PORT` address: a host, and a port from 1 to 65535, with no
/// scheme (the commands that take `--addr` speak gRPC to a coordinator).
pub fn addr(text: &str) -> Result<String, String> {
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!(
            "`{text}`: give HOST:PORT without the {scheme}:// scheme (e.g. 127.0.0.1:50051)"
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "`{text}`: expected HOST:PORT, e.g. 127.0.0.1:50051"
        ));
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!("`{text}`: the host is missing or has spaces"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(text.to_string()),
        _ => Err(format!(
            "`{text}`: the port `{port}` is not a number from 1 to 65535"
        )),
    }
}

/// A clap parser for a `u64` in `min..=max`, with the range in the message.
pub fn u64_in(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |text: &str| match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("`{text}`: use a whole number from {min} to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(addr("127.0.0.1:50051").is_ok());
        assert!(addr("localhost:1").is_ok());
        assert!(addr("[::1]:50051").is_ok());
        for bad in [
            "127.0.0.1",
            ":50051",
            "127.0.0.1:0",
            "127.0.0.1:x",
            "127.0.0.1:70000",
            "http://127.0.0.1:50051",
        ] {
            assert!(addr(bad).is_err(), "{bad}");
        }
        assert!(addr("trellis://h:1").unwrap_err().contains("scheme"));
    }

    #[test]
    fn ranges() {
        let p = u64_in(1, 10);
        assert_eq!(p("3"), Ok(3));
        assert!(p("0").is_err() && p("11").is_err() && p("x").is_err());
    }
}
