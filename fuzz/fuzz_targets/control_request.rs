//! Arbitrary bytes as a request line of the control socket: `control::parse_request` returns
//! a request or an error, never panics, and gives the same result twice. A request it accepts
//! is written back by `Request::to_line` as exactly one line that reads back to the same
//! request, with the names to flush in lower case; a refusal has a code and a one-line message.
#![no_main]

use dns_proxy::ops::control::{Request, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = parse_request(data);
    assert_eq!(first, parse_request(data), "parsing twice disagreed");
    match first {
        Ok(request) => {
            let line = request.to_line();
            assert!(line.ends_with('\n'), "{line:?}");
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert_eq!(
                parse_request(line.as_bytes()),
                Ok(request.clone()),
                "{line:?}"
            );
            if let Request::Flush(names) = &request {
                for name in names {
                    let text = name.to_string();
                    assert_eq!(text, text.to_ascii_lowercase());
                    assert!(!text.is_empty() && !text.ends_with('.'), "{text:?}");
                }
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains('\n'), "an error is one line: {message:?}");
            assert!(!error.code().is_empty());
        }
    }
});
