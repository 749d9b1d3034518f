//! The route cache: what the last compile produced per route, and where it placed it, so that a
//! change recompiles only the routes it touched and patches their candidates into the previous
//! router instead of placing every route again.
//!
//! Placement gives every route a rank (its precedence among routes: oldest first, then
//! `namespace/name`) and every rule a [`RuleId`]. Both are stable: a rule keeps its id while
//! it is unchanged, and ranks are spaced out so that a new route takes a rank between its
//! neighbours' without renumbering them. When no rank is free between two neighbours, the
//! routes around the spot are spread apart (and their candidates placed again); only when most
//! routes changed are all routes placed afresh. The result is the same router either way
//! (buckets in the same order; only the ids and rank numbers differ).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;

use sluice_proxy::router::{Candidate, HostPattern, Router, RouterBuilder};
use sluice_proxy::snapshot::{Rule, RuleId, Rules};

use super::{
    FastMap, Inputs, StatusReport, endpoints, policies::PolicyIndex, route_secret_names, routes,
};
use crate::resources::{EndpointSlice, GatewayRoute, RateLimitPolicy, Secret, Service};

/// Bits of a rank: the candidate tie-break keeps the rule and match index below it.
const RANK_BITS: u32 = 64 - routes::RANK_SHIFT;
const MAX_RANK: u64 = (1 << RANK_BITS) - 1;
/// Space between neighbouring routes when all are placed afresh: room for 24 routes inserted
/// one after another between the same two, and for millions appended after the newest.
#[cfg(not(test))]
const RANK_GAP: u64 = 1 << 24;
/// Small in tests, so that edit sequences run out of ranks and place everything afresh too.
#[cfg(test)]
const RANK_GAP: u64 = 4;

/// Route outputs of the last compile, by route object, and their placement (see
/// [`super::compile_cached`]).
#[derive(Default)]
pub struct RouteCache {
    /// Keyed by the address of the route object; the entry holds the object, so the address
    /// cannot be reused by another while the entry lives. Beside the entry, the compile that
    /// last saw the route (here, not in the entry, so that marking every route seen touches
    /// only this table).
    routes: FastMap<usize, (u64, Box<CachedRoute>)>,
    /// The placed routes in precedence order: their key in `routes` and their rank.
    order: BTreeMap<RouteOrder, (usize, u64)>,
    /// The router of the last compile, which the next one patches.
    router: Option<Arc<Router>>,
    /// Rule ids no placed rule has, and the next never handed out.
    free_ids: Vec<RuleId>,
    next_id: RuleId,
    /// Counts compiles; entries not used by the latest are dropped.
    stamp: u64,
    /// The Services, EndpointSlices and Secrets of the last compile, kept alive so that no new
    /// object can be allocated at an address recorded in `services` or a route's `secrets`.
    held: Held,
    /// Per Service (`namespace/name`): the addresses of its object and its slices at the last
    /// compile, and a version that changes whenever that list does. Exact, not a hash: a
    /// collision would serve stale endpoints.
    services: FastMap<String, ServiceVersion>,
    /// Last version handed out; versions are never reused.
    version: u64,
    /// Endpoint lists handed out, shared by the next compile where still right.
    lists: endpoints::EndpointLists,
    /// How many placed rules send to each Service (`namespace/name`).
    sends_to: FastMap<Arc<str>, usize>,
    /// The addresses of the Secrets and RateLimitPolicies of the last compile, sorted.
    dependencies: Vec<usize>,
    /// The rules of the placed routes, by id, as last placed.
    rules: Rules,
    /// The placed routes that have problems, certificates or unresolved Services, by rank.
    notable: BTreeMap<u64, usize>,
    /// The identity headers of the rules last placed.
    identity_headers: Box<[http::HeaderName]>,
    /// The outputs were compiled without statuses ([`Inputs::skip_statuses`]).
    without_statuses: bool,
    /// How many compiles placed every route afresh.
    #[cfg(test)]
    pub(super) full_placements: usize,
}

/// The router and rules of a compile, and what changed.
pub(super) struct Placement {
    pub router: Arc<Router>,
    pub rules: Rules,
    pub changes: RuleChanges,
    /// The headers client requests lose (see [`super::identity_headers`]).
    pub identity_headers: Box<[http::HeaderName]>,
}

/// Objects of the last compile whose addresses the cache recorded.
#[derive(Default)]
struct Held {
    _services: Vec<Arc<Service>>,
    _slices: Vec<Arc<EndpointSlice>>,
    _secrets: Vec<Arc<Secret>>,
    _policies: Vec<Arc<RateLimitPolicy>>,
}

struct ServiceVersion {
    objects: Box<[usize]>,
    version: u64,
    used: u64,
}

/// One route's output ([`routes::RouteOutput`]) and what it was compiled from. Kept for every
/// route, so kept small: what few routes have is boxed apart (at 10,000 routes, empty lists and
/// a separate box of rule ids were a megabyte).
pub(super) struct CachedRoute {
    pub source: Arc<GatewayRoute>,
    /// The version of every distinct Service the route names, in order of first reference
    /// (0: the Service did not exist), as compiled.
    services: Few<u64>,
    /// The output's rules, each with its id once placed.
    rules: Few<(RuleId, Arc<Rule>)>,
    candidates: Box<[(HostPattern, Candidate)]>,
    pub status: Option<Arc<StatusReport>>,
    /// Precedence among routes (0 until placed).
    rank: u64,
    /// `None` when the route has none of it.
    rare: Option<Box<Rare>>,
}

/// A list that mostly holds one element, which is then kept inline: a boxed slice of one is an
/// allocation of its own (32 bytes with the allocator's header, for 8 or 16 of data).
enum Few<T> {
    One(T),
    Many(Box<[T]>),
}

impl<T> std::ops::Deref for Few<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Few::One(one) => std::slice::from_ref(one),
            Few::Many(many) => many,
        }
    }
}

impl<T> std::ops::DerefMut for Few<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Few::One(one) => std::slice::from_mut(one),
            Few::Many(many) => many,
        }
    }
}

impl<T> FromIterator<T> for Few<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut items: Vec<T> = items.into_iter().collect();
        match (items.pop(), items.is_empty()) {
            (Some(one), true) => Few::One(one),
            (last, _) => {
                items.extend(last);
                Few::Many(items.into_boxed_slice())
            }
        }
    }
}

/// What a cached route seldom has.
struct Rare {
    /// `namespace/name` of the Services among those that did not resolve.
    failed: Box<[String]>,
    /// The address of every Secret object the route references, in reference order (0: it
    /// did not exist), as compiled.
    secrets: Box<[usize]>,
    /// The address of every RateLimitPolicy object targeting the route, as compiled.
    policies: Box<[usize]>,
    diagnostics: Box<[super::Diagnostic]>,
    certificates: Box<[super::edge::ServedCertificate]>,
}

impl CachedRoute {
    fn new(
        source: Arc<GatewayRoute>,
        services: Few<u64>,
        failed: Vec<String>,
        secrets: Box<[usize]>,
        policies: Box<[usize]>,
        output: routes::RouteOutput,
    ) -> Self {
        let routes::RouteOutput {
            rules,
            candidates,
            status,
            diagnostics,
            certificates,
        } = output;
        let rare = Rare {
            failed: failed.into_boxed_slice(),
            secrets,
            policies,
            diagnostics,
            certificates,
        };
        let Rare {
            failed,
            secrets,
            policies,
            diagnostics,
            certificates,
        } = &rare;
        let none = failed.is_empty()
            && secrets.is_empty()
            && policies.is_empty()
            && diagnostics.is_empty()
            && certificates.is_empty();
        CachedRoute {
            source,
            services,
            rules: rules.into_vec().into_iter().map(|r| (0, r)).collect(),
            candidates,
            status,
            rank: 0,
            rare: (!none).then(|| Box::new(rare)),
        }
    }

    fn rare<T>(&self, field: impl FnOnce(&Rare) -> &[T]) -> &[T] {
        self.rare.as_deref().map_or(&[], field)
    }

    /// `namespace/name` of the Services the route names that did not resolve.
    pub fn failed(&self) -> &[String] {
        self.rare(|r| &r.failed)
    }

    pub fn diagnostics(&self) -> &[super::Diagnostic] {
        self.rare(|r| &r.diagnostics)
    }

    pub fn certificates(&self) -> &[super::edge::ServedCertificate] {
        self.rare(|r| &r.certificates)
    }

    /// Has anything besides rules and a status for the snapshot.
    fn notable(&self) -> bool {
        !self.diagnostics().is_empty()
            || !self.certificates().is_empty()
            || !self.failed().is_empty()
    }

    /// The route's rules.
    fn rules(&self) -> impl Iterator<Item = &Arc<Rule>> + '_ {
        self.rules.iter().map(|(_, r)| r)
    }

    /// The ids of the route's rules, once placed.
    fn ids(&self) -> impl Iterator<Item = RuleId> + '_ {
        self.rules.iter().map(|(id, _)| *id)
    }

    /// The route's rules with their ids, once placed.
    fn placed_rules(&self) -> impl Iterator<Item = (RuleId, Arc<Rule>)> + '_ {
        self.rules.iter().map(|(id, r)| (*id, Arc::clone(r)))
    }

    /// The route's candidates as placed: rule ids and the rank in the tie-break.
    fn placed_candidates(&self) -> impl Iterator<Item = (HostPattern, Candidate)> + '_ {
        self.candidates.iter().map(|(host, c)| {
            let mut c = c.clone();
            c.rule = self.rules[c.rule as usize].0;
            c.tiebreak |= self.rank << routes::RANK_SHIFT;
            (host.clone(), c)
        })
    }
}

/// A route's place in precedence: the oldest first (Gateway API), then `namespace/name`.
#[derive(Clone)]
struct RouteOrder(Arc<GatewayRoute>);

impl PartialEq for RouteOrder {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for RouteOrder {}
impl PartialOrd for RouteOrder {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for RouteOrder {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (&self.0.metadata, &other.0.metadata);
        let created = |m: &'_ k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.creation_timestamp.as_ref().map(|t| t.0)
        };
        created(a)
            .cmp(&created(b))
            .then_with(|| {
                let (x, y) = (a.namespace.as_deref(), b.namespace.as_deref());
                x.unwrap_or("default").cmp(y.unwrap_or("default"))
            })
            .then_with(|| a.name.as_deref().cmp(&b.name.as_deref()))
    }
}

/// What changed between two compiles, by rule (`route`, `rule` name).
#[derive(Debug, Default)]
pub struct RuleChanges {
    /// Rules that are new.
    pub added: Vec<(Arc<str>, Arc<str>)>,
    /// Rules that are gone.
    pub removed: Vec<(Arc<str>, Arc<str>)>,
    /// Rules compiled anew under a name that was there before.
    pub changed: Vec<(Arc<str>, Arc<str>)>,
}

/// What [`RouteCache::update`] found: the routes compiled anew (by key), and the entries of the
/// routes that are gone or were compiled anew (taken out of the cache).
pub(super) struct Update {
    fresh: Vec<usize>,
    gone: Vec<CachedRoute>,
}

impl RouteCache {
    /// Brings the cache up to `inputs`: every route that is the same object as last time, with
    /// the same Services (and EndpointSlices), Secrets and RateLimitPolicies, keeps its output;
    /// every other is compiled with `compile_one` (which also returns the Services it failed to
    /// resolve).
    pub(super) fn update(
        &mut self,
        inputs: &Inputs,
        policies: &PolicyIndex<'_>,
        mut compile_one: impl FnMut(&GatewayRoute) -> (routes::RouteOutput, Vec<String>),
    ) -> Update {
        // Outputs without statuses cannot serve inputs that want them, nor the other way
        // round: such a change starts afresh.
        if inputs.skip_statuses != self.without_statuses {
            *self = RouteCache {
                without_statuses: inputs.skip_statuses,
                ..RouteCache::default()
            };
        }
        self.stamp += 1;
        let stamp = self.stamp;
        let (versions, services_changed) = self.service_versions(inputs);
        let mut dependencies: Vec<usize> = inputs
            .secrets
            .iter()
            .map(|s| Arc::as_ptr(s) as usize)
            .chain(inputs.policies.iter().map(|p| Arc::as_ptr(p) as usize))
            .collect();
        dependencies.sort_unstable();
        // With the same Services, Secrets and policies as last time, a route that is the same
        // object compiles to the same output: no need to check what it depends on, route by
        // route.
        let unchanged = !services_changed && dependencies == self.dependencies;
        self.dependencies = dependencies;
        let secret_addresses: FastMap<(&str, &str), usize> = inputs
            .secrets
            .iter()
            .filter_map(|s| {
                let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                Some(((ns, s.metadata.name.as_deref()?), Arc::as_ptr(s) as usize))
            })
            .collect();
        let policy_addresses = |route: &GatewayRoute| {
            let ns = route.metadata.namespace.as_deref().unwrap_or("default");
            let name = route.metadata.name.as_deref().unwrap_or("");
            policies.addresses_targeting(ns, name)
        };
        let mut fresh = Vec::new();
        let mut gone = Vec::new();
        let mut compile_in = |this: &mut Self, route: &Arc<GatewayRoute>, gone: &mut Vec<_>| {
            let (output, failed) = compile_one(route);
            let entry = CachedRoute::new(
                Arc::clone(route),
                route_service_versions(route, &versions).collect(),
                failed,
                route_secret_addresses(route, &secret_addresses).collect(),
                policy_addresses(route),
                output,
            );
            let key = Arc::as_ptr(route) as usize;
            gone.extend(
                this.routes
                    .insert(key, (stamp, Box::new(entry)))
                    .map(|(_, e)| *e),
            );
            key
        };
        // The source says which route objects came and went since the last compile: with
        // nothing else changed, those are all there is to look at. (Checked against the cache:
        // a source whose last inputs this cache did not compile is looked at in full.)
        let delta = inputs.routes_delta.as_ref().filter(|d| {
            let known = |r: &usize| self.routes.contains_key(r);
            let left = d.removed.iter().filter(|k| known(k)).count();
            let new = d
                .added
                .iter()
                .filter(|r| !known(&(Arc::as_ptr(r) as usize)))
                .count();
            unchanged
                && self.router.is_some()
                && self.routes.len() - left + new == inputs.routes.len()
        });
        if let Some(delta) = delta {
            for key in &delta.removed {
                gone.extend(self.routes.remove(key).map(|(_, e)| *e));
            }
            for route in &delta.added {
                if !self.routes.contains_key(&(Arc::as_ptr(route) as usize)) {
                    fresh.push(compile_in(self, route, &mut gone));
                }
            }
        } else {
            for route in &inputs.routes {
                let key = Arc::as_ptr(route) as usize;
                let reused = self.routes.get_mut(&key).is_some_and(|(used, entry)| {
                    // With nothing it depends on changed, the same object compiles the same:
                    // the entry is not even read.
                    let same = *used == stamp
                        || unchanged
                        || (route_service_versions(route, &versions)
                            .eq(entry.services.iter().copied())
                            && route_secret_addresses(route, &secret_addresses)
                                .eq(entry.rare(|r| &r.secrets).iter().copied())
                            && *policy_addresses(route) == *entry.rare(|r| &r.policies));
                    *used = stamp;
                    same
                });
                if !reused {
                    fresh.push(compile_in(self, route, &mut gone));
                }
            }
            // Routes that are gone (or changed: their new object has a new key) leave the
            // cache. (A pass that followed a source's changes marks nothing: the next full pass
            // marks every route it sees afresh.)
            let left: Vec<usize> = self
                .routes
                .iter()
                .filter(|(_, (used, _))| *used != stamp)
                .map(|(k, _)| *k)
                .collect();
            gone.extend(
                left.into_iter()
                    .filter_map(|k| self.routes.remove(&k))
                    .map(|(_, e)| *e),
            );
        }
        self.held = Held {
            _services: inputs.services.clone(),
            _slices: inputs.slices.clone(),
            _secrets: inputs.secrets.clone(),
            _policies: inputs.policies.clone(),
        };
        Update { fresh, gone }
    }

    /// Places the routes of `update` (ranks, rule ids): the router and rules of every cached
    /// route, patched from the last ones when that can be done, and what changed by rule.
    pub(super) fn place(&mut self, update: Update) -> Placement {
        let changes = self.rule_changes(&update);
        let Update { mut fresh, gone } = update;
        // Identity headers depend on the authentication of every rule: they are worked out
        // again only when a rule that authenticates came or went.
        let authenticates = |route: &CachedRoute| {
            route.rules().any(|r| {
                r.policy
                    .steps
                    .iter()
                    .any(|s| matches!(s, sluice_proxy::pipeline::Step::Authenticate(_)))
            })
        };
        let auth_changed = gone.iter().any(authenticates)
            || fresh.iter().any(|k| authenticates(&self.routes[k].1));
        // A patch costs what the touched buckets hold; placing everything, what all do.
        let small = (fresh.len() + gone.len()) * 2 <= self.routes.len().max(64);
        let patched = match &self.router {
            Some(router) if small => self.patch(router.clone(), &mut fresh, &gone),
            _ => None,
        };
        let full = patched.is_none();
        let router = Arc::new(patched.unwrap_or_else(|| self.place_all()));
        self.router = Some(Arc::clone(&router));
        if full || auth_changed {
            self.identity_headers = super::identity_headers(&self.rules);
        }
        Placement {
            router,
            rules: self.rules.clone(),
            changes,
            identity_headers: self.identity_headers.clone(),
        }
    }

    /// The placed routes with problems, certificates or unresolved Services, in precedence
    /// order.
    pub(super) fn notable(&self) -> impl Iterator<Item = &CachedRoute> {
        self.notable.values().map(|k| &*self.routes[k].1)
    }

    /// The statuses of the placed routes in precedence order, then `policies`.
    pub fn statuses_with(&self, policies: Vec<Arc<StatusReport>>) -> Vec<Arc<StatusReport>> {
        let mut out = Vec::with_capacity(self.order.len() + policies.len());
        out.extend(
            self.order
                .values()
                .filter_map(|(k, _)| self.routes[k].1.status.clone()),
        );
        out.extend(policies);
        out
    }

    /// Number of routes cached.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.routes.len()
    }

    /// The endpoint lists of earlier compiles, for [`endpoints::EndpointIndex`].
    pub(super) fn take_lists(&mut self) -> endpoints::EndpointLists {
        std::mem::take(&mut self.lists)
    }

    /// Keeps `lists` for the next compile, without those no rule has any more.
    pub(super) fn keep_lists(&mut self, mut lists: endpoints::EndpointLists) {
        lists.prune();
        self.lists = lists;
    }

    /// True when some placed rule sends to Service `service` (`namespace/name`).
    pub fn sends_to(&self, service: &str) -> bool {
        self.sends_to.contains_key(service)
    }

    /// Enters the route `key`, ranked already, into the placement: ids for its rules, and it
    /// counts among the notable routes and the senders to its Services.
    fn enter(&mut self, key: usize) -> Option<&CachedRoute> {
        let rules = self.routes.get(&key)?.1.rules.len();
        let ids: Vec<RuleId> = (0..rules).map(|_| self.take_id()).collect();
        let entry = &mut self.routes.get_mut(&key)?.1;
        for ((id, _), new) in entry.rules.iter_mut().zip(ids) {
            *id = new;
        }
        if entry.notable() {
            self.notable.insert(entry.rank, key);
        }
        count_services(&mut self.sends_to, entry, 1);
        Some(entry)
    }

    /// `fresh` patched into `router` in place of `gone`; `None` when some new route shares its
    /// place with another route, or no room can be made for it, which takes placing all
    /// afresh.
    fn patch(
        &mut self,
        router: Arc<Router>,
        fresh: &mut [usize],
        gone: &[CachedRoute],
    ) -> Option<Router> {
        let mut removed = Vec::new();
        let mut changed: Vec<(RuleId, Option<Arc<sluice_proxy::snapshot::Rule>>)> = Vec::new();
        // The gone routes leave; a successor of the same age and name may take the place.
        let mut vacated: BTreeMap<RouteOrder, u64> = BTreeMap::new();
        for entry in gone.iter().filter(|e| e.rank != 0) {
            let own = Arc::as_ptr(&entry.source) as usize;
            count_services(&mut self.sends_to, entry, -1);
            changed.extend(entry.ids().map(|id| (id, None)));
            if self.notable.get(&entry.rank) == Some(&own) {
                self.notable.remove(&entry.rank);
            }
            removed.extend(entry.placed_candidates());
            let order = RouteOrder(Arc::clone(&entry.source));
            if self.order.get(&order).is_some_and(|(k, _)| *k == own) {
                self.order.remove(&order);
                vacated.insert(order, entry.rank);
            }
        }
        fresh.sort_by_cached_key(|k| RouteOrder(Arc::clone(&self.routes[k].1.source)));
        let mut moved = Vec::new();
        let mut placed: FastMap<usize, ()> = FastMap::default();
        for key in fresh.iter() {
            let order = RouteOrder(Arc::clone(&self.routes[key].1.source));
            if self.order.contains_key(&order) {
                // Another route of the same age and name.
                return None;
            }
            let wanted = vacated.remove(&order);
            let rank = match self.free_rank(&order, wanted) {
                Some(rank) => rank,
                None => {
                    self.spread_around(&order, &placed, &mut moved, &mut removed)?;
                    self.free_rank(&order, None)?
                }
            };
            self.order.insert(order, (*key, rank));
            placed.insert(*key, ());
            self.routes.get_mut(key)?.1.rank = rank;
        }
        // Routes that moved to make room go back in at their new ranks, under the same ids.
        let mut added = Vec::new();
        for key in moved {
            let entry = &self.routes.get(&key)?.1;
            added.extend(entry.placed_candidates());
            if entry.notable() {
                self.notable.insert(entry.rank, key);
            }
        }
        for key in fresh.iter() {
            let entry = self.enter(*key)?;
            added.extend(entry.placed_candidates());
            changed.extend(entry.placed_rules().map(|(id, r)| (id, Some(r))));
        }
        self.rules = self.rules.with(changed);
        // Ids of gone rules are reused only from the next compile on: the patch tells removed
        // candidates by their id.
        for entry in gone {
            self.free_ids.extend(entry.ids());
        }
        Some(router.patched(&removed, added))
    }

    /// A rank for a route at `order` between its neighbours': `wanted` if it still is (the
    /// rank of the route it replaces), else the middle of the gap, or the gap's worth after the
    /// last route. `None` when the neighbours leave no room.
    fn free_rank(&self, order: &RouteOrder, wanted: Option<u64>) -> Option<u64> {
        let low = self
            .order
            .range(..order)
            .next_back()
            .map_or(0, |(_, (_, r))| *r);
        let high = self.order.range(order..).next().map(|(_, (_, r))| *r);
        if let Some(w) = wanted
            && w > low
            && high.is_none_or(|h| w < h)
        {
            return Some(w);
        }
        match high {
            None if MAX_RANK - low >= RANK_GAP => Some(low + RANK_GAP),
            None if MAX_RANK - low >= 2 => Some(low + (MAX_RANK - low) / 2),
            Some(high) if high - low >= 2 => Some(low + (high - low) / 2),
            _ => None,
        }
    }

    /// Makes room at `order`: the placed routes around it get evenly spread ranks over the
    /// range their outer neighbours bound, in a window that doubles until that range is wide
    /// enough (so that the work stays near the crowded spot). Routes placed before in this patch
    /// (`placed`) only change rank; any other that moves is noted in `moved` and its
    /// candidates in `removed`, to go back in at its new rank. `None` when no window makes room.
    fn spread_around(
        &mut self,
        order: &RouteOrder,
        placed: &FastMap<usize, ()>,
        moved: &mut Vec<usize>,
        removed: &mut Vec<(HostPattern, Candidate)>,
    ) -> Option<()> {
        let mut half = 8;
        loop {
            let before: Vec<(RouteOrder, usize, u64)> = self
                .order
                .range(..order)
                .rev()
                .take(half + 1)
                .map(|(o, (k, r))| (o.clone(), *k, *r))
                .collect();
            let after: Vec<(RouteOrder, usize, u64)> = self
                .order
                .range(order..)
                .take(half + 1)
                .map(|(o, (k, r))| (o.clone(), *k, *r))
                .collect();
            let (low, left) = match before.get(half) {
                Some(bound) => (bound.2, &before[..half]),
                None => (0, &before[..]),
            };
            let (high, right) = match after.get(half) {
                Some(bound) => (bound.2, &after[..half]),
                None => (MAX_RANK + 1, &after[..]),
            };
            let step = (high - low) / (left.len() as u64 + right.len() as u64 + 2);
            if step >= 2 {
                let mut rank = low;
                for (o, k, _) in left.iter().rev() {
                    rank += step;
                    self.rerank(o, *k, rank, placed, moved, removed);
                }
                // The slot between the two sides stays free for the route at `order`.
                rank += step;
                for (o, k, _) in right {
                    rank += step;
                    self.rerank(o, *k, rank, placed, moved, removed);
                }
                return Some(());
            }
            if left.len() < half && right.len() < half {
                return None;
            }
            half *= 2;
        }
    }

    /// Gives the placed route `key` at `order` rank `rank` (see [`RouteCache::spread_around`]).
    fn rerank(
        &mut self,
        order: &RouteOrder,
        key: usize,
        rank: u64,
        placed: &FastMap<usize, ()>,
        moved: &mut Vec<usize>,
        removed: &mut Vec<(HostPattern, Candidate)>,
    ) {
        if let Some(slot) = self.order.get_mut(order) {
            slot.1 = rank;
        }
        let Some(entry) = self.routes.get_mut(&key).map(|(_, e)| e) else {
            return;
        };
        if !placed.contains_key(&key) && !moved.contains(&key) {
            removed.extend(entry.placed_candidates());
            if self.notable.get(&entry.rank) == Some(&key) {
                self.notable.remove(&entry.rank);
            }
            moved.push(key);
        }
        entry.rank = rank;
    }

    fn take_id(&mut self) -> RuleId {
        self.free_ids.pop().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        })
    }

    /// Every cached route placed afresh: ranks evenly spaced in precedence order, rule ids
    /// counted from 0 in that order, the router built from scratch.
    fn place_all(&mut self) -> Router {
        #[cfg(test)]
        {
            self.full_placements += 1;
        }
        let mut keys: Vec<(RouteOrder, usize)> = self
            .routes
            .iter()
            .map(|(k, (_, e))| (RouteOrder(Arc::clone(&e.source)), *k))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let gap = (MAX_RANK / (keys.len() as u64 + 1)).min(RANK_GAP);
        self.order.clear();
        self.free_ids.clear();
        self.next_id = 0;
        self.sends_to.clear();
        self.notable.clear();
        let mut placed = Vec::new();
        let mut builder = RouterBuilder::default();
        for (i, (order, key)) in keys.into_iter().enumerate() {
            let rank = (i as u64 + 1) * gap;
            // Two routes of the same age and name (a caller's duplicate): the first keeps the
            // place, the other is not served.
            if self.order.contains_key(&order) {
                continue;
            }
            self.order.insert(order, (key, rank));
            if let Some((_, entry)) = self.routes.get_mut(&key) {
                entry.rank = rank;
            }
            let Some(entry) = self.enter(key) else {
                continue;
            };
            for (host, candidate) in entry.placed_candidates() {
                builder.add(host, candidate);
            }
            placed.extend(entry.placed_rules());
        }
        self.rules = placed.into_iter().collect();
        builder.build()
    }

    /// Rules added, removed and compiled anew, from the routes compiled anew and those gone.
    fn rule_changes(&self, update: &Update) -> RuleChanges {
        let key =
            |r: &Arc<sluice_proxy::snapshot::Rule>| (Arc::clone(r.route()), Arc::clone(r.name()));
        let mut before: FastMap<(Arc<str>, Arc<str>), ()> = update
            .gone
            .iter()
            .flat_map(|e| e.rules().map(key))
            .map(|k| (k, ()))
            .collect();
        let mut changes = RuleChanges::default();
        for rule in update.fresh.iter().flat_map(|k| self.routes[k].1.rules()) {
            let k = key(rule);
            if before.remove(&k).is_some() {
                changes.changed.push(k);
            } else {
                changes.added.push(k);
            }
        }
        changes.removed.extend(before.into_keys());
        for list in [
            &mut changes.added,
            &mut changes.removed,
            &mut changes.changed,
        ] {
            list.sort_unstable();
        }
        changes
    }

    /// The current version of every Service in `inputs`: unchanged when the Service object and
    /// its EndpointSlice objects are the same objects as at the last compile. Objects are
    /// shared, unchanged, from one set of inputs to the next, and the cache holds the previous
    /// ones while a compile runs, so an address cannot be taken by a replacement.
    /// Also says whether any version is new or gone since the last compile.
    fn service_versions<'a>(
        &mut self,
        inputs: &'a Inputs,
    ) -> (FastMap<(&'a str, &'a str), u64>, bool) {
        let mut objects: FastMap<(&str, &str), Vec<usize>> =
            FastMap::with_capacity_and_hasher(inputs.services.len(), Default::default());
        for s in &inputs.services {
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            if let Some(name) = s.metadata.name.as_deref() {
                objects
                    .entry((ns, name))
                    .or_default()
                    .push(Arc::as_ptr(s) as usize);
            }
        }
        for slice in &inputs.slices {
            let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
            if let Some(service) = slice.labels().get(endpoints::SERVICE_NAME_LABEL) {
                // Slices of a Service that does not exist count too: they give it a version.
                objects
                    .entry((ns, service.as_str()))
                    .or_default()
                    .push(Arc::as_ptr(slice) as usize);
            }
        }
        let stamp = self.stamp;
        let mut versions = FastMap::with_capacity_and_hasher(objects.len(), Default::default());
        let mut id = String::new();
        let mut changed = false;
        for ((ns, name), mut list) in objects {
            list.sort_unstable();
            id.clear();
            id.push_str(ns);
            id.push('/');
            id.push_str(name);
            let version = match self.services.get_mut(id.as_str()) {
                Some(known) if *known.objects == *list => {
                    known.used = stamp;
                    known.version
                }
                _ => {
                    self.version += 1;
                    changed = true;
                    self.services.insert(
                        id.clone(),
                        ServiceVersion {
                            objects: list.into_boxed_slice(),
                            version: self.version,
                            used: stamp,
                        },
                    );
                    self.version
                }
            };
            versions.insert((ns, name), version);
        }
        let before = self.services.len();
        self.services.retain(|_, s| s.used == stamp);
        changed |= self.services.len() != before;
        (versions, changed)
    }
}

/// Adds `by` to the count of every Service `route`'s rules send to (once per backend).
fn count_services(counts: &mut FastMap<Arc<str>, usize>, route: &CachedRoute, by: isize) {
    for backend in route.rules().flat_map(|r| r.backends.iter()) {
        let service = &backend.service;
        match counts.get_mut(&**service) {
            Some(n) => {
                *n = n.saturating_add_signed(by);
                if *n == 0 {
                    counts.remove(&**service);
                }
            }
            None if by > 0 => {
                counts.insert(Arc::clone(service), by.unsigned_abs());
            }
            None => {}
        }
    }
}

/// The versions of the distinct Services `route` names, in order of first reference; 0 for one
/// that does not exist.
fn route_service_versions<'a>(
    route: &'a GatewayRoute,
    versions: &'a FastMap<(&str, &str), u64>,
) -> impl Iterator<Item = u64> + 'a {
    let namespace = route.metadata.namespace.as_deref().unwrap_or("default");
    let refs = move || route.spec.rules.iter().flat_map(|r| &r.backend_refs);
    refs()
        .enumerate()
        // References are few (at most 64 rules of 16): a scan of the earlier ones beats a set.
        .filter(move |(i, b)| !refs().take(*i).any(|earlier| earlier.name == b.name))
        .map(|(_, b)| b.name.as_str())
        .map(move |name| versions.get(&(namespace, name)).copied().unwrap_or(0))
}

/// The addresses of the Secret objects `route` references (0 for one that does not exist).
fn route_secret_addresses<'a>(
    route: &'a GatewayRoute,
    secrets: &'a FastMap<(&str, &str), usize>,
) -> impl Iterator<Item = usize> + 'a {
    let namespace = route.metadata.namespace.as_deref().unwrap_or("default");
    route_secret_names(route).map(move |name| secrets.get(&(namespace, name)).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::Few;

    #[test]
    fn a_few_holds_what_it_was_collected_from_in_order_and_one_inline() {
        for n in 0..4u32 {
            let items: Vec<u32> = (10..10 + n).collect();
            let mut few: Few<u32> = items.iter().copied().collect();
            assert_eq!(&*few, &items[..]);
            assert_eq!(matches!(few, Few::One(_)), n == 1, "{n} elements");
            few.iter_mut().for_each(|x| *x += 1);
            assert!(few.iter().zip(&items).all(|(a, b)| *a == b + 1));
        }
    }
}
