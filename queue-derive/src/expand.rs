//! Emit the code: the `Model` impl and the delayable builder for `#[derive(Model)]`; one
//! wrapper, one dispatch thunk and one registry entry per method for `#[queueable]`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::parse::{Model, Param, Queueable};

/// Name of the builder `Model::queue()` returns.
fn builder_ident(model: &syn::Ident) -> syn::Ident {
    format_ident!("{}Queue", model)
}

pub fn model(m: &Model) -> TokenStream {
    let Model { ident, vis, table, model_name, id_field, id_type, krate } = m;
    let builder = builder_ident(ident);
    let builder_doc = format!(
        "Delayable calls of [`{ident}`]'s queueable methods, returned by [`{ident}::queue`]: set job options, then call a method to queue it."
    );
    quote! {
        const _: () = {
            use #krate::__private as __q;
            impl __q::Model for #ident {
                const MODEL_NAME: &'static str = #model_name;

                fn record_id(&self) -> i64 {
                    ::core::convert::Into::<i64>::into(self.#id_field)
                }
            }

            // Every connection type the model's Diesel derives can load it from.
            impl<__C> __q::LoadRecords<__C> for #ident
            where
                __C: __q::JobConnection,
                for<'__q> __q::diesel::dsl::Select<
                    __q::diesel::dsl::Filter<
                        #table::table,
                        __q::diesel::dsl::EqAny<#table::#id_field, ::std::vec::Vec<#id_type>>,
                    >,
                    __q::diesel::dsl::AsSelect<Self, <__C as __q::diesel::Connection>::Backend>,
                >: __q::diesel::query_dsl::LoadQuery<'__q, __C, Self>,
            {
                fn load_by_ids(
                    conn: &mut __C,
                    ids: &[i64],
                ) -> __q::diesel::QueryResult<::std::vec::Vec<Self>> {
                    use __q::diesel::prelude::*;
                    let ids: ::std::vec::Vec<#id_type> = ids
                        .iter()
                        .filter_map(|id| <#id_type as ::core::convert::TryFrom<i64>>::try_from(*id).ok())
                        .collect();
                    #table::table
                        .filter(#table::#id_field.eq_any(ids))
                        .select(<Self as __q::diesel::SelectableHelper<_>>::as_select())
                        .load(conn)
                }
            }
        };

        #[doc = #builder_doc]
        #[derive(Debug, Clone, Default)]
        #vis struct #builder {
            options: #krate::__private::JobOptions,
        }

        impl #ident {
            /// Queue calls of this model's methods: `Self::queue().priority(30).method(records, args…)`.
            #vis fn queue() -> #builder {
                #builder::default()
            }
        }

        impl #builder {
            /// Priority of the job: lower runs first (default 10).
            pub fn priority(mut self, priority: i32) -> Self {
                self.options.priority = Some(priority);
                self
            }

            /// Not before this: a delay (`chrono::TimeDelta`, `std::time::Duration`) or a moment.
            pub fn eta(mut self, eta: impl Into<#krate::__private::Eta>) -> Self {
                self.options.eta = Some(eta.into());
                self
            }

            /// Retries before the job becomes failed (default 5; 0 retries forever).
            pub fn max_retries(mut self, max_retries: u32) -> Self {
                self.options.max_retries = Some(i32::try_from(max_retries).unwrap_or(i32::MAX));
                self
            }

            /// Description shown to operators (default: the method's first doc line).
            pub fn description(mut self, description: impl Into<String>) -> Self {
                self.options.description = Some(description.into());
                self
            }

            /// Channel of the job, overriding the method's (e.g. `"root.export"`).
            pub fn channel(mut self, channel: impl Into<String>) -> Self {
                self.options.channel = Some(channel.into());
                self
            }

            /// Identity key: a job with the same key that has not run yet is not queued twice.
            pub fn identity_key(mut self, key: impl Into<String>) -> Self {
                self.options.identity_key = Some(key.into());
                self
            }

            /// Keep a second job with the same identity key out for longer: while a job with the
            /// key queued within `period` exists, or one in any of `states` (e.g.
            /// `&[JobState::Started]`); the call then returns the existing job's handle. Concurrent
            /// callers agree: the database serializes them per key.
            pub fn unique(mut self, period: ::std::time::Duration, states: &[#krate::JobState]) -> Self {
                self.options.unique = Some(#krate::__private::Unique { period: Some(period), states: states.to_vec() });
                self
            }

            /// Start only once the job(s) of `handle` are done (queue_job's `on_done`; call it
            /// several times for a group). A cancelled parent cancels this job too; a failed one
            /// keeps it waiting until an operator requeues or sets the parent done.
            pub fn depends_on(mut self, handle: &#krate::__private::JobHandle) -> Self {
                self.options.depends_on.extend_from_slice(handle.uuids());
                self
            }

            /// The options set so far.
            pub fn options(&self) -> &#krate::__private::JobOptions {
                &self.options
            }
        }
    }
}

pub fn queueable(q: &Queueable) -> TokenStream {
    let Queueable { self_ty, methods, krate } = q;
    let builder = builder_ident(self_ty);
    let mut items = Vec::new();
    for method in methods {
        let name = &method.ident;
        let method_name = name.to_string();
        let entry = format_ident!("__QUEUE_FN_{}", name);
        let thunk = format_ident!("__queue_run_{}", name);
        let vis = &method.vis;
        let opt_str = |v: &Option<syn::LitStr>| match v {
            Some(lit) => quote!(::core::option::Option::Some(#lit)),
            None => quote!(::core::option::Option::None),
        };
        let opt_int = |v: &Option<syn::LitInt>| match v {
            Some(lit) => quote!(::core::option::Option::Some(#lit)),
            None => quote!(::core::option::Option::None),
        };
        let channel = opt_str(&method.job.channel);
        let priority = opt_int(&method.job.priority);
        let max_retries = opt_int(&method.job.max_retries);
        let retry_pattern = opt_str(&method.job.retry_pattern);
        let timeout = opt_str(&method.job.timeout);
        let isolated = method.job.isolated;
        let description = match (&method.job.description, &method.doc) {
            (Some(lit), _) => quote!(::core::option::Option::Some(#lit)),
            (None, Some(doc)) => quote!(::core::option::Option::Some(#doc)),
            (None, None) => quote!(::core::option::Option::None),
        };
        let defaults = quote! {
            __q::FunctionDefaults {
                channel: #channel,
                priority: #priority,
                max_retries: #max_retries,
                description: #description,
                retry_pattern: #retry_pattern,
                timeout: #timeout,
                isolated: #isolated,
            }
        };
        // Spanned at the connection type: a type the queue cannot give is reported there.
        let conn = match &method.conn {
            Some(ty) => quote_spanned!(ty.span()=> #ty),
            None => quote!(__q::AnyConnection),
        };
        let mut call_args = Vec::new();
        let mut decode = Vec::new();
        let mut wrapper_params = Vec::new();
        let mut encode = Vec::new();
        for param in &method.params {
            match param {
                Param::Env => call_args.push(quote!(env)),
                Param::Arg { ident, ty } => {
                    let key = ident.to_string();
                    // Spanned at the argument's type: a type that cannot be stored is reported there.
                    decode.push(quote_spanned!(ty.span()=> let #ident: #ty = __q::arg(inv, #key)?;));
                    call_args.push(quote!(#ident));
                    wrapper_params.push(quote!(#ident: #ty));
                    encode.push(quote_spanned! {ty.span()=>
                        __args.insert(
                            ::std::string::String::from(#key),
                            __q::encode_arg::<#ty>(&#ident, #method_name, #key)?,
                        );
                    });
                }
            }
        }
        let call = if method.is_async {
            quote!(__q::block_on(#self_ty::#name(records, #(#call_args),*)))
        } else {
            quote!(#self_ty::#name(records, #(#call_args),*))
        };
        let doc = format!(
            "Queue a call of [`{self_ty}::{method_name}`] on `records`: stored as a job in the current transaction, run later by a worker."
        );
        if let Some(cron) = &method.job.cron {
            let tick = format_ident!("__queue_tick_{}", name);
            let time_zone = match &method.job.time_zone {
                Some(lit) => quote!(#lit),
                None => quote!("UTC"),
            };
            let catch_up = match &method.job.catch_up {
                Some(variant) => quote!(__q::CatchUp::#variant),
                None => quote!(__q::CatchUp::Last),
            };
            let skip = method.job.skip_if_unfinished.then(|| quote!(.skip_if_unfinished()));
            items.push(quote! {
                #[allow(non_snake_case)]
                fn #tick(_env: &__q::Env, _tick: &__q::Tick) -> __q::ScheduleResult {
                    #self_ty::queue().#name(__q::NoRecords)?;
                    ::core::result::Result::Ok(())
                }

                __q::inventory::submit! {
                    __q::Schedule::of_function(&#entry, #cron, #tick)
                        .time_zone(#time_zone)
                        .catch_up(#catch_up)
                        #skip
                }
            });
        }
        items.push(quote! {
            #[allow(non_upper_case_globals)]
            static #entry: __q::JobFunction = __q::JobFunction::new(
                <#self_ty as __q::Model>::MODEL_NAME,
                #method_name,
                #defaults,
                #thunk,
            );

            __q::inventory::submit! {
                __q::Registration(&#entry)
            }

            #[allow(non_snake_case)]
            fn #thunk(
                env: &__q::Env,
                inv: &__q::Invocation<'_>,
            ) -> __q::JobResult<::core::option::Option<::std::string::String>> {
                let env = __q::typed_env::<#conn>(env, inv)?;
                let records = __q::load_records::<#self_ty, #conn>(env, inv)?;
                #(#decode)*
                __q::JobReturn::into_outcome(#call)
            }

            impl #builder {
                #[doc = #doc]
                #vis fn #name<__R: __q::Records<#self_ty>>(
                    &self,
                    records: __R,
                    #(#wrapper_params),*
                ) -> ::core::result::Result<__q::JobHandle, __q::Error> {
                    #[allow(unused_mut)]
                    let mut __args = __q::Map::new();
                    #(#encode)*
                    __q::enqueue(
                        &self.options,
                        &#entry,
                        __q::Records::record_ids(&records),
                        __q::Value::Object(__args),
                    )
                }
            }
        });
    }
    quote! {
        const _: () = {
            use #krate::__private as __q;
            #(#items)*
        };
    }
}
