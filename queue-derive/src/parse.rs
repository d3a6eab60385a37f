//! Parse and check the macros' input. Every error is collected, with its span, in one pass.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, FnArg, Ident, ImplItem, ItemImpl, Lit, LitStr, Meta, Pat, Path, Token, Type};

/// Collects errors so all of them are reported at once.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        let error = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub fn add(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }
}

/// A `#[derive(Model)]` input.
pub struct Model {
    pub ident: Ident,
    pub vis: syn::Visibility,
    pub table: Path,
    pub model_name: String,
    pub id_field: Ident,
    pub id_type: Type,
    pub krate: Path,
}

fn default_crate() -> Path {
    syn::parse_quote!(::queue_diesel)
}

fn parse_crate(lit: &LitStr) -> syn::Result<Path> {
    lit.parse::<Path>().map_err(|_| syn::Error::new(lit.span(), "expected a path, like \"::queue_diesel\""))
}

/// Diesel's default table name: the snake-case plural of the struct name.
fn default_table(ident: &Ident) -> Path {
    let mut snake = String::new();
    for (i, ch) in ident.to_string().chars().enumerate() {
        if ch.is_uppercase() {
            if i > 0 {
                snake.push('_');
            }
            snake.extend(ch.to_lowercase());
        } else {
            snake.push(ch);
        }
    }
    snake.push('s');
    let ident = Ident::new(&snake, ident.span());
    syn::parse_quote!(#ident)
}

pub fn model(input: &syn::DeriveInput) -> syn::Result<Model> {
    let mut errors = Errors::default();
    let mut table = None;
    let mut model_name = None;
    let mut id_field = None;
    let mut krate = None;
    for attr in &input.attrs {
        if attr.path().is_ident("diesel") {
            // Only read table_name; Diesel checks its own attribute.
            let _ = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("table_name") {
                    table = Some(meta.value()?.parse::<Path>()?);
                } else if meta.input.peek(Token![=]) {
                    let _: Expr = meta.value()?.parse()?;
                } else if meta.input.peek(syn::token::Paren) {
                    let _: TokenStream = meta.input.parse()?;
                }
                Ok(())
            });
        } else if attr.path().is_ident("queue") {
            let outcome = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("model") {
                    let lit: LitStr = meta.value()?.parse()?;
                    if lit.value().trim().is_empty() {
                        return Err(syn::Error::new(lit.span(), "the model name must not be empty"));
                    }
                    model_name = Some(lit.value());
                } else if meta.path.is_ident("id") {
                    id_field = Some(meta.value()?.parse::<Ident>()?);
                } else if meta.path.is_ident("crate") {
                    krate = Some(parse_crate(&meta.value()?.parse()?)?);
                } else {
                    return Err(meta.error(format!(
                        "unknown queue attribute `{}`; expected one of: model, id, crate",
                        meta.path.to_token_stream()
                    )));
                }
                Ok(())
            });
            if let Err(e) = outcome {
                errors.add(e);
            }
        }
    }
    let fields = match &input.data {
        syn::Data::Struct(data) => Some(&data.fields),
        _ => {
            errors.push(input.ident.span(), "#[derive(Model)] works on structs with named fields");
            None
        }
    };
    let table = table.unwrap_or_else(|| default_table(&input.ident));
    let model_name =
        model_name.unwrap_or_else(|| table.segments.last().map(|s| s.ident.to_string()).unwrap_or_default());
    let id_ident = id_field.unwrap_or_else(|| Ident::new("id", Span::call_site()));
    let id_type = fields
        .and_then(|fields| fields.iter().find(|f| f.ident.as_ref() == Some(&id_ident)).map(|f| f.ty.clone()));
    if fields.is_some() && id_type.is_none() {
        errors.push(
            input.ident.span(),
            format!("#[derive(Model)] needs an integer id field `{id_ident}` (or name it with #[queue(id = field)])"),
        );
    }
    errors.finish(())?;
    Ok(Model {
        ident: input.ident.clone(),
        vis: input.vis.clone(),
        table,
        model_name,
        id_field: id_ident,
        id_type: id_type.unwrap_or_else(|| syn::parse_quote!(i64)),
        krate: krate.unwrap_or_else(default_crate),
    })
}

/// Defaults from `#[job(...)]`.
#[derive(Default)]
pub struct JobAttr {
    pub channel: Option<LitStr>,
    pub priority: Option<syn::LitInt>,
    pub max_retries: Option<syn::LitInt>,
    pub description: Option<LitStr>,
    pub retry_pattern: Option<LitStr>,
    pub timeout: Option<LitStr>,
    pub isolated: bool,
    /// A periodic schedule: the cron pattern, its time zone, catch-up rule and overlap rule.
    pub cron: Option<LitStr>,
    pub time_zone: Option<LitStr>,
    pub catch_up: Option<Ident>,
    pub skip_if_unfinished: bool,
    /// Where `skip_if_unfinished` was written, for errors.
    pub skip_span: Option<proc_macro2::Span>,
}

/// One parameter of a job method after the records.
pub enum Param {
    Env,
    Arg { ident: Ident, ty: Box<Type> },
}

/// One queueable method.
pub struct Method {
    pub ident: Ident,
    pub vis: syn::Visibility,
    pub params: Vec<Param>,
    /// The connection type of `env: &Env<C>`; `None` for `&Env` (the queue's `AnyConnection`).
    pub conn: Option<Type>,
    /// `async fn`: the worker drives its future on the executor's thread.
    pub is_async: bool,
    pub job: JobAttr,
    pub doc: Option<String>,
}

/// A `#[queueable]` impl block.
pub struct Queueable {
    pub self_ty: Ident,
    pub methods: Vec<Method>,
    pub krate: Path,
}

const JOB_KEYS: &str = "channel, priority, max_retries, description, retry_pattern, timeout, isolated, cron, time_zone, catch_up, skip_if_unfinished";

/// Check a cron literal's shape: five fields, six with seconds first (seven with a year), or an
/// `@name`. The values are checked when the binary's schedules are built.
fn valid_cron(text: &str) -> bool {
    let text = text.trim();
    text.starts_with('@') && !text.contains(char::is_whitespace)
        || (5..=7).contains(&text.split_whitespace().count())
}

/// Check a duration literal (`"30s"`, `"5m"`, `"1h30m"`) the way `queue_core` parses it.
fn valid_duration(text: &str) -> bool {
    let mut rest = text.trim();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let Ok(value) = rest[..digits].parse::<u32>() else { return false };
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        if !matches!(&rest[..unit_len], "ms" | "s" | "m" | "h" | "d") {
            return false;
        }
        total += u128::from(value);
        rest = &rest[unit_len..];
    }
    total > 0
}

/// Check a retry pattern literal (`"1:10,5:60"`) the way `queue_core::RetryPattern` parses it.
fn valid_retry_pattern(text: &str) -> bool {
    let mut tries = Vec::new();
    for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let Some((n, secs)) = token.split_once(':') else { return false };
        match (n.trim().parse::<u32>(), secs.trim().parse::<u64>()) {
            (Ok(n), Ok(_)) if n > 0 && !tries.contains(&n) => tries.push(n),
            _ => return false,
        }
    }
    !tries.is_empty()
}

/// Check a channel literal the way `queue_core::channel::check_name` does.
fn valid_channel(name: &str) -> bool {
    let mut parts = name.split('.');
    parts.next() == Some("root")
        && parts
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

fn parse_job_attr(attr: &Attribute, errors: &mut Errors) -> JobAttr {
    let mut job = JobAttr::default();
    if matches!(attr.meta, Meta::Path(_)) {
        return job;
    }
    // Each bad option is reported and skipped, so one pass shows them all.
    let parsed = attr.parse_nested_meta(|meta| {
        let key = meta.path.to_token_stream().to_string();
        // A flag: `isolated` alone, or `isolated = true|false`.
        if key == "isolated" || key == "skip_if_unfinished" {
            let value = if meta.input.peek(syn::Token![=]) {
                let lit: syn::LitBool = meta.value()?.parse()?;
                lit.value
            } else {
                true
            };
            if key == "isolated" {
                job.isolated = value;
            } else {
                job.skip_if_unfinished = value;
                job.skip_span = Some(meta.path.span());
            }
            return Ok(());
        }
        let value: Expr = meta.value()?.parse()?;
        let string = || match &value {
            Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) => Ok(s.clone()),
            other => Err(syn::Error::new(other.span(), format!("expected a string for `{key}`"))),
        };
        let integer = |min: i64| match &value {
            Expr::Lit(syn::ExprLit { lit: Lit::Int(i), .. }) if i.base10_parse::<i64>().is_ok_and(|n| n >= min) => {
                Ok(i.clone())
            }
            other => Err(syn::Error::new(other.span(), format!("expected a whole number >= {min} for `{key}`"))),
        };
        let outcome = match key.as_str() {
            "channel" => string().and_then(|lit| {
                if valid_channel(&lit.value()) {
                    job.channel = Some(lit);
                    Ok(())
                } else {
                    Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "invalid channel {:?}: expected \"root\" or a dotted name under it, like \"root.export\"",
                            lit.value()
                        ),
                    ))
                }
            }),
            "priority" => integer(i64::from(i32::MIN)).map(|lit| job.priority = Some(lit)),
            "max_retries" => integer(0)
                .map(|lit| job.max_retries = Some(lit))
                .map_err(|e| syn::Error::new(e.span(), "expected max_retries >= 0 (0 retries forever)")),
            "description" => string().map(|lit| job.description = Some(lit)),
            "cron" => string().and_then(|lit| {
                if valid_cron(&lit.value()) {
                    job.cron = Some(lit);
                    Ok(())
                } else {
                    Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "invalid cron pattern {:?}: expected five fields, \"minute hour day month weekday\" (like \"0 3 * * *\"), or six with seconds first",
                            lit.value()
                        ),
                    ))
                }
            }),
            "time_zone" => string().and_then(|lit| {
                if lit.value().trim().is_empty() || lit.value().contains(char::is_whitespace) {
                    Err(syn::Error::new(lit.span(), "expected a time zone name like \"Europe/Paris\" or \"UTC\""))
                } else {
                    job.time_zone = Some(lit);
                    Ok(())
                }
            }),
            "catch_up" => string().and_then(|lit| {
                let variant = match lit.value().as_str() {
                    "none" => "None",
                    "last" => "Last",
                    "all" => "All",
                    other => {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!("invalid catch_up {other:?}: expected \"none\", \"last\" or \"all\""),
                        ));
                    }
                };
                job.catch_up = Some(Ident::new(variant, lit.span()));
                Ok(())
            }),
            "timeout" => string().and_then(|lit| {
                if valid_duration(&lit.value()) {
                    job.timeout = Some(lit);
                    Ok(())
                } else {
                    Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "invalid timeout {:?}: expected a duration like \"30s\", \"5m\" or \"1h30m\"",
                            lit.value()
                        ),
                    ))
                }
            }),
            "retry_pattern" => string().and_then(|lit| {
                if valid_retry_pattern(&lit.value()) {
                    job.retry_pattern = Some(lit);
                    Ok(())
                } else {
                    Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "invalid retry pattern {:?}: expected items like \"1:10,5:60\" (from the Nth try, wait S seconds), tries counted from 1, each once",
                            lit.value()
                        ),
                    ))
                }
            }),
            _ => Err(syn::Error::new(
                meta.path.span(),
                format!("unknown job option `{key}`; expected one of: {JOB_KEYS}"),
            )),
        };
        if let Err(e) = outcome {
            errors.add(e);
        }
        Ok(())
    });
    if let Err(e) = parsed {
        errors.add(e);
    }
    if job.cron.is_none() {
        let needs_cron = "needs `cron = \"…\"`: it is a setting of the method's periodic schedule";
        if let Some(lit) = &job.time_zone {
            errors.push(lit.span(), format!("`time_zone` {needs_cron}"));
        }
        if let Some(ident) = &job.catch_up {
            errors.push(ident.span(), format!("`catch_up` {needs_cron}"));
        }
        if job.skip_if_unfinished {
            errors.push(
                job.skip_span.unwrap_or_else(|| attr.span()),
                format!("`skip_if_unfinished` {needs_cron}"),
            );
        }
    }
    job
}

fn first_doc_line(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().filter(|a| a.path().is_ident("doc")).find_map(|a| match &a.meta {
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) => {
                let line = s.value().trim().to_owned();
                (!line.is_empty()).then_some(line)
            }
            _ => None,
        },
        _ => None,
    })
}

/// `C` in `&Env<C>`.
fn env_connection(ty: &Type) -> Option<Type> {
    let Type::Reference(r) = ty else { return None };
    let Type::Path(p) = &*r.elem else { return None };
    let syn::PathArguments::AngleBracketed(args) = &p.path.segments.last()?.arguments else { return None };
    args.args.iter().find_map(|arg| match arg {
        syn::GenericArgument::Type(ty) => Some(ty.clone()),
        _ => None,
    })
}

/// True for `&Env`, `&mut Env` or a path ending in `Env`.
fn is_env(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => match &*r.elem {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Env"),
            _ => false,
        },
        _ => false,
    }
}

/// True for `Vec<Self>` or `Vec<TheModel>`.
fn is_records(ty: &Type, self_ty: &Ident) -> bool {
    let Type::Path(p) = ty else { return false };
    let Some(last) = p.path.segments.last() else { return false };
    if last.ident != "Vec" {
        return false;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return false };
    match args.args.first() {
        Some(syn::GenericArgument::Type(Type::Path(inner))) => {
            inner.path.is_ident("Self") || inner.path.is_ident(self_ty)
        }
        _ => false,
    }
}

/// Parse a `#[queueable]` block. Returns the block to emit (without `#[job]` attributes) and the
/// parsed methods or the errors.
pub fn queueable(args: TokenStream, mut item: ItemImpl) -> (ItemImpl, syn::Result<Queueable>) {
    let mut errors = Errors::default();
    let mut krate = default_crate();
    let parser = Punctuated::<Meta, Token![,]>::parse_terminated;
    match parser.parse2(args) {
        Ok(metas) => {
            for meta in metas {
                match &meta {
                    Meta::NameValue(nv) if nv.path.is_ident("crate") => match &nv.value {
                        Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) => match parse_crate(s) {
                            Ok(path) => krate = path,
                            Err(e) => errors.add(e),
                        },
                        other => errors.push(other.span(), "expected crate = \"path\""),
                    },
                    other => errors.push(other.span(), "unknown queueable option; expected crate = \"path\""),
                }
            }
        }
        Err(e) => errors.add(e),
    }
    let self_ty = match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    };
    let Some(self_ty) = self_ty else {
        errors
            .push(item.self_ty.span(), "#[queueable] goes on `impl Model { … }` of a struct deriving Model");
        let result =
            errors.finish(Queueable { self_ty: Ident::new("_", Span::call_site()), methods: vec![], krate });
        return (item, result);
    };
    if item.trait_.is_some() {
        errors.push(item.span(), "#[queueable] goes on an inherent impl block, not on a trait impl");
    }
    if !item.generics.params.is_empty() {
        errors.push(item.generics.span(), "#[queueable] does not support generic impl blocks");
    }
    let mut methods = Vec::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(f) = impl_item else { continue };
        let mut job = JobAttr::default();
        let mut job_attrs = 0;
        f.attrs.retain(|attr| {
            if attr.path().is_ident("job") {
                job_attrs += 1;
                if job_attrs > 1 {
                    errors.push(attr.span(), "only one #[job(...)] attribute per method");
                } else {
                    job = parse_job_attr(attr, &mut errors);
                }
                false
            } else {
                true
            }
        });
        let sig = &f.sig;
        if !sig.generics.params.is_empty() {
            errors.push(
                sig.generics.span(),
                "a queueable method cannot be generic: its call is stored and replayed",
            );
        }
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Typed(first)) if is_records(&first.ty, &self_ty) => {}
            Some(FnArg::Receiver(receiver)) => errors.push(
                receiver.span(),
                format!("a queueable method takes its records as first argument (`records: Vec<{self_ty}>`), not `self`"),
            ),
            Some(other) => errors.push(
                other.span(),
                format!("the first argument of a queueable method must be its records: `records: Vec<{self_ty}>`"),
            ),
            None => errors.push(
                sig.ident.span(),
                format!("method without a records argument: a queueable method takes `records: Vec<{self_ty}>` first"),
            ),
        }
        let mut params = Vec::new();
        let mut conn = None;
        let mut seen_env = false;
        for input in inputs {
            let FnArg::Typed(typed) = input else { continue };
            if is_env(&typed.ty) {
                if let Type::Reference(r) = &*typed.ty
                    && r.mutability.is_some()
                {
                    errors.push(r.span(), "take the environment as `env: &Env` (shared): its connection is borrowed with env.conn()");
                }
                if seen_env {
                    errors.push(typed.ty.span(), "only one `&Env` argument per method");
                }
                seen_env = true;
                conn = env_connection(&typed.ty);
                params.push(Param::Env);
                continue;
            }
            let Pat::Ident(pat) = &*typed.pat else {
                errors.push(typed.pat.span(), "job arguments need plain names: they are stored by name");
                continue;
            };
            if let Type::Reference(r) = &*typed.ty {
                errors.push(
                    r.span(),
                    "job arguments are stored as JSON and must be owned values: use String for &str, Vec<T> for &[T]",
                );
                continue;
            }
            if job.cron.is_some() {
                errors.push(
                    typed.span(),
                    "a method with `cron` is called by its schedule with no records and no arguments; queue calls that take arguments from a schedule in code (queue_diesel::schedule!)",
                );
            }
            params.push(Param::Arg { ident: pat.ident.clone(), ty: typed.ty.clone() });
        }
        methods.push(Method {
            ident: sig.ident.clone(),
            vis: f.vis.clone(),
            params,
            conn,
            is_async: sig.asyncness.is_some(),
            job,
            doc: first_doc_line(&f.attrs),
        });
    }
    if methods.is_empty() {
        errors.push(item.self_ty.span(), "#[queueable] block has no method to queue");
    }
    let result = errors.finish(Queueable { self_ty, methods, krate });
    (item, result)
}
