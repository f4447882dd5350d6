//! The proxy-wasm shim. Only this crate touches proxy-wasm: the root context compiles the
//! config into a [`Router`] once per VM, each HTTP context drives a [`RequestFlow`] through
//! the [`host::ProxyWasmHost`] adapter. All decisions live in `router-core`.

mod host;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as WasmAction, BufferType, ContextType, LogLevel};
use router_core::flow::{Action, RequestFlow};
use router_core::{config::UserConfig, Capabilities, Router};

use host::ProxyWasmHost;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { router: None }) });
}}

struct Root {
    router: Option<Rc<Router>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let raw = match proxy_wasm::hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
        {
            Ok(Some(raw)) => raw,
            _ => {
                host::log(
                    LogLevel::Error,
                    "vsr: no plugin configuration: the filter needs the router config as JSON",
                );
                return false;
            }
        };
        let loaded = UserConfig::from_json("plugin configuration", &raw)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                let env = |var: &str| std::env::var(var).ok();
                Router::new(&cfg, &env, Capabilities::default()).map_err(|errors| {
                    errors
                        .iter()
                        .map(|e| format!("plugin configuration: {}: {}", e.path, e.message))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            });
        match loaded {
            Ok(router) => {
                self.router = Some(Rc::new(router));
                host::log(LogLevel::Info, "vsr: configuration loaded");
                true
            }
            Err(msg) => {
                host::log(
                    LogLevel::Error,
                    &format!("vsr: invalid configuration:\n{msg}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let router = self.router.clone()?;
        Some(Box::new(Filter {
            flow: RequestFlow::new(router),
            body_size: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    flow: RequestFlow,
    body_size: usize,
}

fn to_wasm(a: Action) -> WasmAction {
    match a {
        Action::Continue => WasmAction::Continue,
        Action::Pause => WasmAction::Pause,
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> WasmAction {
        to_wasm(
            self.flow
                .on_request_headers(&mut ProxyWasmHost { body_size: 0 }, end_of_stream),
        )
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> WasmAction {
        self.body_size = body_size;
        to_wasm(self.flow.on_request_body(
            &mut ProxyWasmHost { body_size },
            body_size,
            end_of_stream,
        ))
    }

    fn on_http_response_headers(
        &mut self,
        _num_headers: usize,
        _end_of_stream: bool,
    ) -> WasmAction {
        to_wasm(self.flow.on_response_headers(&mut ProxyWasmHost {
            body_size: self.body_size,
        }))
    }
}
