//! The proxy-wasm shim. Only this crate touches proxy-wasm: the root context compiles the
//! config into a [`Router`] once per VM, each HTTP context drives a [`RequestFlow`] through
//! the [`host::ProxyWasmHost`] adapter. All decisions live in `router-core`.

mod host;

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as WasmAction, BufferType, ContextType, LogLevel};
use router_core::flow::{Action, RequestFlow};
use router_core::router::rpc;
use router_core::{config::UserConfig, Capabilities, Router};

use host::ProxyWasmHost;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { router: None, registering: None }) });
}}

struct Root {
    router: Option<Rc<Router>>,
    /// The in-flight `RegisterCandidates` call, while the sets are not registered yet.
    registering: Option<u32>,
}

/// Retry period for registering candidate sets while the sidecar is not up.
const REGISTER_RETRY: Duration = Duration::from_secs(1);

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _size: usize) {
        if self.registering != Some(token_id) {
            return;
        }
        self.registering = None;
        if status_code == 0 {
            host::log(
                LogLevel::Info,
                "vsr: candidate sets registered with the sidecar",
            );
            let _ = proxy_wasm::hostcalls::set_tick_period(Duration::ZERO);
        } else {
            // Keep ticking: the next tick tries again. Requests meanwhile register on demand.
            host::log(
                LogLevel::Warn,
                &format!(
                    "vsr: registering candidate sets failed (gRPC status {status_code}); retrying"
                ),
            );
        }
    }
}

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
                if router.register_message().is_some() {
                    // Registered from on_tick: clusters are not usable inside on_configure.
                    let _ = proxy_wasm::hostcalls::set_tick_period(REGISTER_RETRY);
                }
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

    fn on_tick(&mut self) {
        let Some(router) = &self.router else {
            return;
        };
        let Some(message) = router.register_message() else {
            let _ = proxy_wasm::hostcalls::set_tick_period(Duration::ZERO);
            return;
        };
        if self.registering.is_some() {
            return;
        }
        match proxy_wasm::hostcalls::dispatch_grpc_call(
            router.sidecar_cluster(),
            rpc::SERVICE,
            rpc::REGISTER_CANDIDATES,
            Vec::new(),
            Some(&message),
            Duration::from_millis(router.sidecar_timeout_ms().max(2000)),
        ) {
            Ok(token) => self.registering = Some(token),
            Err(e) => host::log(
                LogLevel::Warn,
                &format!("vsr: cannot call the sidecar to register candidate sets: {e:?}"),
            ),
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

impl Context for Filter {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if status_code != 0 {
            let (_, message) =
                proxy_wasm::hostcalls::get_grpc_status().unwrap_or((status_code, None));
            host::log(
                LogLevel::Warn,
                &format!(
                    "vsr: sidecar call failed: gRPC status {status_code}: {}",
                    message.as_deref().unwrap_or("(no message)")
                ),
            );
        }
        let body = (status_code == 0)
            .then(|| host::grpc_response_body(response_size))
            .flatten();
        self.flow.on_grpc_response(
            &mut ProxyWasmHost {
                body_size: self.body_size,
            },
            token_id,
            status_code,
            body,
        );
    }
}

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

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> WasmAction {
        to_wasm(self.flow.on_response_body(
            &mut ProxyWasmHost {
                body_size: self.body_size,
            },
            body_size,
            end_of_stream,
        ))
    }
}
