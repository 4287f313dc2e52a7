//! Name resolution for Wasm guests through cluster DNS: wk's own `wasi:sockets/ip-name-lookup`
//! (it replaces wasmtime-wasi's, which asks the host's resolver), and the outgoing wasi:http
//! hook that connects `http://hello-svc:8200/` to the Service's address.
//!
//! Both resolve as a pod's libc would, through the pod's search path (see
//! [`crate::dns::Resolver`]). Without cluster DNS (an agent not yet started, unit tests) they
//! fall back to the host's resolver.

use std::net::IpAddr;

use futures_util::FutureExt;
use tokio::task::JoinHandle;
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress, Network};
use wasmtime_wasi::p2::{DynPollable, Pollable, SocketError};

use wasmtime_wasi_http::WasiHttpHooks;

use crate::dns::{LookupError, Resolver};

wasmtime::component::bindgen!({
    inline: "
        package wk:host;
        world guest-names {
            import wasi:sockets/ip-name-lookup@0.2.12;
        }
    ",
    path: "wit",
    require_store_data_send: true,
    imports: { default: trappable },
    trappable_error_type: {
        "wasi:sockets/network.error-code" => wasmtime_wasi::p2::SocketError,
    },
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:sockets/network": wasmtime_wasi::p2::bindings::sockets::network,
        "wasi:sockets/ip-name-lookup.resolve-address-stream": Resolving,
    },
});

use wasi::sockets::ip_name_lookup::{Host, HostResolveAddressStream};

/// A lookup in progress, then its addresses.
pub enum Resolving {
    /// Still being resolved.
    Pending(JoinHandle<Result<Vec<IpAddr>, ErrorCode>>),
    /// The addresses not yet read, or why there are none.
    Done(Result<std::vec::IntoIter<IpAddr>, ErrorCode>),
}

impl Resolving {
    /// Takes the result if the lookup has finished.
    fn settle(&mut self) {
        if let Self::Pending(task) = self
            && let Some(joined) = task.now_or_never()
        {
            *self = Self::Done(
                joined
                    .unwrap_or(Err(ErrorCode::PermanentResolverFailure))
                    .map(Vec::into_iter),
            );
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Resolving {
    async fn ready(&mut self) {
        if let Self::Pending(task) = self {
            let joined = task.await;
            *self = Self::Done(
                joined
                    .unwrap_or(Err(ErrorCode::PermanentResolverFailure))
                    .map(Vec::into_iter),
            );
        }
    }
}

/// A guest's name resolution: its resource table, and its pod's resolver.
pub struct Lookup<'a> {
    /// The store's resource table.
    pub table: &'a mut ResourceTable,
    /// Cluster DNS as the pod sees it (the host's resolver without it).
    pub resolver: Option<&'a Resolver>,
    /// Whether the guest may resolve names at all.
    pub allowed: bool,
}

/// The [`HasData`] marker that links [`Lookup`].
pub struct Names;

impl HasData for Names {
    type Data<'a> = Lookup<'a>;
}

/// Replaces wasmtime-wasi's `ip-name-lookup` in `linker` with cluster DNS.
///
/// # Errors
/// What the linker refuses.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> Lookup<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = wasi::sockets::ip_name_lookup::add_to_linker::<T, Names>(linker, view);
    linker.allow_shadowing(false);
    linked
}

/// The address a name spells (`100.64.0.9`, `::1`, `[::1]`).
fn literal(name: &str) -> Option<IpAddr> {
    name.strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name)
        .parse()
        .ok()
}

/// The addresses of `name` for a guest: through `resolver`, or the host's resolver.
pub async fn resolve(resolver: Option<Resolver>, name: String) -> Result<Vec<IpAddr>, ErrorCode> {
    if let Some(ip) = literal(&name) {
        return Ok(vec![ip]);
    }
    if !valid_name(&name) {
        return Err(ErrorCode::InvalidArgument);
    }
    match resolver {
        Some(r) => r.lookup(&name).await.map_err(|e| match e {
            LookupError::NotFound => ErrorCode::NameUnresolvable,
            LookupError::Unavailable => ErrorCode::TemporaryResolverFailure,
        }),
        None => tokio::net::lookup_host((name.as_str(), 0))
            .await
            .map(|addrs| addrs.map(|a| a.ip().to_canonical()).collect())
            .map_err(|_| ErrorCode::NameUnresolvable),
    }
}

/// Whether `name` is a host name a resolver could be asked for.
fn valid_name(name: &str) -> bool {
    let bare = name.strip_suffix('.').unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

// ip-name-lookup's error type lives in wasi:sockets/network, so its conversion is part of the
// interface. Only ip-name-lookup is linked from here: wasmtime-wasi's network interface stays
// what guests call, so `network-error-code` and the network's drop are never reached here.
impl wasmtime_wasi::p2::bindings::sockets::network::Host for Lookup<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        _: Resource<wasmtime_wasi::p2::bindings::io::error::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        Ok(None)
    }
}

impl wasmtime_wasi::p2::bindings::sockets::network::HostNetwork for Lookup<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        self.table.delete(network)?;
        Ok(())
    }
}

impl Host for Lookup<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<Resolving>, SocketError> {
        // The network resource is the capability to resolve; it must be the guest's own.
        self.table.get(&network)?;
        if !self.allowed {
            return Err(ErrorCode::PermanentResolverFailure.into());
        }
        if literal(&name).is_none() && !valid_name(&name) {
            return Err(ErrorCode::InvalidArgument.into());
        }
        let task = tokio::spawn(resolve(self.resolver.cloned(), name));
        Ok(self.table.push(Resolving::Pending(task))?)
    }
}

impl HostResolveAddressStream for Lookup<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<Resolving>,
    ) -> Result<Option<IpAddress>, SocketError> {
        let resolving = self.table.get_mut(&stream)?;
        resolving.settle();
        match resolving {
            Resolving::Pending(_) => Err(ErrorCode::WouldBlock.into()),
            Resolving::Done(Ok(addresses)) => Ok(addresses.next().map(IpAddress::from)),
            Resolving::Done(Err(e)) => Err((*e).into()),
        }
    }

    fn subscribe(
        &mut self,
        stream: Resource<Resolving>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(self.table, stream)
    }

    fn drop(&mut self, stream: Resource<Resolving>) -> wasmtime::Result<()> {
        if let Resolving::Pending(task) = self.table.delete(stream)? {
            task.abort();
        }
        Ok(())
    }
}

/// Outgoing wasi:http requests of a pod: a plain-HTTP request to a name is sent to the
/// address cluster DNS gives it (the Host header keeps the name). HTTPS keeps the name, for
/// its certificate, and is resolved by the host.
pub struct Hooks {
    /// Cluster DNS as the pod sees it.
    pub resolver: Option<Resolver>,
}

/// What [`WasiHttpHooks::send_request`] returns.
type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Sent {
        drop(fut);
        let resolver = self.resolver.clone();
        Box::new(async move {
            use http_body_util::BodyExt;
            if let Some(resolver) = resolver {
                to_address(&mut request, resolver).await?;
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Points a plain-HTTP request at its host's address from cluster DNS.
async fn to_address<B>(
    request: &mut http::Request<B>,
    resolver: Resolver,
) -> Result<(), wasmtime_wasi_http::Error> {
    use wasmtime_wasi_http::Error;
    let uri = request.uri().clone();
    if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        return Ok(());
    }
    let Some(authority) = uri.authority() else {
        return Ok(());
    };
    let host = authority.host();
    if literal(host).is_some() {
        return Ok(());
    }
    let ip = match resolve(Some(resolver), host.to_owned()).await {
        Ok(ips) => ips.into_iter().next().ok_or(Error::DestinationNotFound)?,
        Err(ErrorCode::TemporaryResolverFailure) => return Err(Error::DnsTimeout),
        Err(_) => {
            return Err(Error::DnsError {
                rcode: Some("NXDOMAIN".into()),
                info_code: None,
            });
        }
    };
    let port = authority.port_u16().unwrap_or(80);
    let address = match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    let mut parts = uri.into_parts();
    parts.authority = Some(address.parse().map_err(|_| Error::HttpRequestUriInvalid)?);
    *request.uri_mut() = http::Uri::from_parts(parts).map_err(|_| Error::HttpRequestUriInvalid)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked_before_they_are_asked_for() {
        for ok in [
            "hello-svc",
            "hello-svc.default.svc.cluster.local.",
            "_http._tcp.web",
            "a1",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "white space",
            "emoji.🦀",
            &"x".repeat(64),
            "a/b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn addresses_resolve_to_themselves_and_bad_names_are_refused() {
        assert_eq!(
            resolve(None, "100.64.0.9".into()).await.unwrap(),
            ["100.64.0.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            resolve(None, "[::1]".into()).await.unwrap(),
            ["::1".parse::<IpAddr>().unwrap()]
        );
        assert!(matches!(
            resolve(None, "no such/name".into()).await,
            Err(ErrorCode::InvalidArgument)
        ));
    }
}
