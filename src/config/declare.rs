//! How a key is declared: the `keys!` macro turns one line per key (doc,
//! field, type, validating kind, default) into the struct, its `Default`, its loading with
//! figment's provenance in errors, the list of valid keys and the `check-config` rendering.
//!
//! A key's *kind* ([`Key`]) says what is written (`Raw`, deserialized by figment, which names
//! the source and key of a wrong type) and how it is checked into the field's value, with the
//! reason when it cannot be. Kinds live in `types.rs`; a plain `bool` or `u32` is its own kind.

use std::marker::PhantomData;

use figment::Figment;
use serde::de::DeserializeOwned;

use super::ConfigError;
use super::layers::{extract, origin};

/// A kind of key: how its value is read, checked and printed.
pub(crate) trait Key {
    /// The value as written; figment's errors for it name the source and key.
    type Raw: DeserializeOwned;
    /// The checked value, as `Config` holds it.
    type Value;
    /// The value, or why it cannot be used.
    fn check(raw: Self::Raw) -> Result<Self::Value, Reason>;
    /// The value as TOML; `None` for a table, which `check-config` prints after the keys.
    fn toml(value: &Self::Value) -> Option<String>;
}

/// Why a value was refused, and where inside the key (`"[1].address"`, `".listen"`; empty for
/// the key itself).
#[derive(Debug)]
pub(crate) struct Reason {
    pub(crate) at: String,
    pub(crate) text: String,
}

impl Reason {
    pub(crate) fn new(text: impl Into<String>) -> Reason {
        Reason {
            at: String::new(),
            text: text.into(),
        }
    }

    /// A reason about the part `at` of the key's value.
    pub(crate) fn at(at: impl Into<String>, text: impl Into<String>) -> Reason {
        Reason {
            at: at.into(),
            text: text.into(),
        }
    }
}

/// A struct of keys, as the macro generates it.
pub(crate) trait Keys {
    /// The names of its keys, in declaration order.
    fn names(out: &mut Vec<&'static str>);
    /// Each key's name and one-line doc.
    #[cfg(test)]
    fn docs(out: &mut Vec<(&'static str, String)>);
    /// Whether `key` is one of these keys (`None` if not) and, if so, whether the value the
    /// layers give it has the type it needs, without checking it further.
    fn parses(key: &str, figment: &Figment) -> Option<Result<(), ConfigError>>;
    /// Replaces each key's value by the one the layers set, if any, checked.
    fn load(&mut self, figment: &Figment) -> Result<(), ConfigError>;
    /// Each key's name and TOML value (`None` for tables).
    fn render(&self, out: &mut Vec<(&'static str, Option<String>)>);
}

/// One field of a struct of keys: a key of some kind, or a [`Section`] of keys. `name` is the
/// key's name in the file; a section ignores its own and answers for its keys.
pub(crate) trait Entry {
    /// The field's type.
    type Value;
    fn names(name: &'static str, out: &mut Vec<&'static str>);
    #[cfg(test)]
    fn docs(name: &'static str, doc: &[&str], out: &mut Vec<(&'static str, String)>);
    fn parses(name: &str, key: &str, figment: &Figment) -> Option<Result<(), ConfigError>>;
    fn load(value: &mut Self::Value, name: &str, figment: &Figment) -> Result<(), ConfigError>;
    fn render(
        value: &Self::Value,
        name: &'static str,
        out: &mut Vec<(&'static str, Option<String>)>,
    );
}

impl<K: Key> Entry for K {
    type Value = K::Value;

    fn names(name: &'static str, out: &mut Vec<&'static str>) {
        out.push(name);
    }

    #[cfg(test)]
    fn docs(name: &'static str, doc: &[&str], out: &mut Vec<(&'static str, String)>) {
        let lines: Vec<&str> = doc.iter().map(|line| line.trim()).collect();
        out.push((name, lines.join(" ")));
    }

    fn parses(name: &str, key: &str, figment: &Figment) -> Option<Result<(), ConfigError>> {
        (name == key).then(|| extract::<K::Raw>(figment, name).map(drop))
    }

    fn load(value: &mut K::Value, name: &str, figment: &Figment) -> Result<(), ConfigError> {
        if !figment.contains(name) {
            return Ok(());
        }
        let raw = extract::<K::Raw>(figment, name)?;
        *value = K::check(raw).map_err(|reason| ConfigError::Invalid {
            origin: origin(figment, name),
            key: format!("{name}{}", reason.at),
            reason: reason.text,
        })?;
        Ok(())
    }

    fn render(value: &K::Value, name: &'static str, out: &mut Vec<(&'static str, Option<String>)>) {
        out.push((name, K::toml(value)));
    }
}

/// A field that is a struct of keys of its own (`cache: CacheConfig`): its keys are top-level
/// keys of the file, listed where the field is declared.
pub(crate) struct Section<S>(PhantomData<S>);

impl<S: Keys> Entry for Section<S> {
    type Value = S;

    fn names(_: &'static str, out: &mut Vec<&'static str>) {
        S::names(out);
    }

    #[cfg(test)]
    fn docs(_: &'static str, _: &[&str], out: &mut Vec<(&'static str, String)>) {
        S::docs(out);
    }

    fn parses(_: &str, key: &str, figment: &Figment) -> Option<Result<(), ConfigError>> {
        S::parses(key, figment)
    }

    fn load(value: &mut S, _: &str, figment: &Figment) -> Result<(), ConfigError> {
        value.load(figment)
    }

    fn render(value: &S, _: &'static str, out: &mut Vec<(&'static str, Option<String>)>) {
        value.render(out);
    }
}

/// Declares a struct of configuration keys. Each field is
///
/// ```text
/// /// One-line doc.
/// #[key = "name"]                      // when the key is not the field's name
/// pub field: Type as Kind = default;   // `as Kind` when the kind is not `Type` itself
/// ```
///
/// and gets the field, its default, its loading and checking, and its `check-config` line.
/// A field is `pub` only when the binary or the fuzz targets read it, else `pub(crate)`.
macro_rules! keys {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[key = $key:literal])?
                $field_vis:vis $field:ident : $ty:ty $(as $kind:ty)? = $default:expr;
            )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $(
                $(#[doc = $doc])*
                $field_vis $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> $name {
                $name {
                    $($field: $default,)*
                }
            }
        }

        impl $crate::config::declare::Keys for $name {
            fn names(out: &mut Vec<&'static str>) {
                $(
                    <keys!(@kind $ty $(as $kind)?) as $crate::config::declare::Entry>::names(
                        keys!(@key $field $($key)?),
                        out,
                    );
                )*
            }

            #[cfg(test)]
            fn docs(out: &mut Vec<(&'static str, String)>) {
                $(
                    <keys!(@kind $ty $(as $kind)?) as $crate::config::declare::Entry>::docs(
                        keys!(@key $field $($key)?),
                        &[$($doc),*],
                        out,
                    );
                )*
            }

            fn parses(
                key: &str,
                figment: &figment::Figment,
            ) -> Option<Result<(), $crate::config::ConfigError>> {
                $(
                    let parsed = <keys!(@kind $ty $(as $kind)?) as $crate::config::declare::Entry>::parses(
                        keys!(@key $field $($key)?),
                        key,
                        figment,
                    );
                    if parsed.is_some() {
                        return parsed;
                    }
                )*
                None
            }

            fn load(&mut self, figment: &figment::Figment) -> Result<(), $crate::config::ConfigError> {
                $(
                    <keys!(@kind $ty $(as $kind)?) as $crate::config::declare::Entry>::load(
                        &mut self.$field,
                        keys!(@key $field $($key)?),
                        figment,
                    )?;
                )*
                Ok(())
            }

            fn render(&self, out: &mut Vec<(&'static str, Option<String>)>) {
                $(
                    <keys!(@kind $ty $(as $kind)?) as $crate::config::declare::Entry>::render(
                        &self.$field,
                        keys!(@key $field $($key)?),
                        out,
                    );
                )*
            }
        }
    };
    (@kind $ty:ty as $kind:ty) => { $kind };
    (@kind $ty:ty) => { $ty };
    (@key $field:ident $key:literal) => { $key };
    (@key $field:ident) => { stringify!($field) };
}

pub(crate) use keys;
