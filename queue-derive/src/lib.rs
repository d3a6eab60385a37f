//! Procedural macros of `queue`: `#[derive(Model)]` and `#[queueable]`. Use them through
//! `queue_diesel`, which re-exports them; the generated code calls only
//! `queue_diesel::__private` (or the path given with `crate = "…"`).
//!
//! Each macro parses (collecting every attribute error in one pass), then expands.
#![deny(missing_docs)]

mod expand;
mod parse;

use proc_macro::TokenStream;

/// Make a Diesel model queueable: `Model::queue()` returns a delayable builder, records are
/// re-loaded by id when a job runs.
///
/// Attributes: `#[diesel(table_name = path)]` (Diesel's own; default: the snake-case plural of the
/// struct name), `#[queue(model = "res.partner", id = field, crate = "path")]` (all optional;
/// the model name defaults to the table name, the id field to `id`).
#[proc_macro_derive(Model, attributes(queue))]
pub fn derive_model(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    match parse::model(&input) {
        Ok(model) => expand::model(&model).into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Make every method of an impl block queueable: `Model::queue().method(records, args…)` stores
/// a job that calls it later. Each method takes its records first (`records: Vec<Self>`),
/// optionally `env: &Env`, then JSON-serialisable arguments. `#[job(channel = "root.x",
/// priority = 10, max_retries = 5, description = "…")]` sets a method's defaults; its first doc
/// line is the default description.
///
/// The block itself is emitted unchanged (less the `#[job]` attributes).
#[proc_macro_attribute]
pub fn queueable(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(input as syn::ItemImpl);
    let args = proc_macro2::TokenStream::from(args);
    let (block, parsed) = parse::queueable(args, item);
    let generated = match parsed {
        Ok(queueable) => expand::queueable(&queueable),
        Err(e) => e.to_compile_error(),
    };
    quote::quote!(#block #generated).into()
}
