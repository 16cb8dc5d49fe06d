//! Writing: the per-frontend and per-backend map writes of a sync pass, in
//! the order that never lets the datapath see a frontend with a missing or
//! wrong backend (see the module above).

use std::collections::{BTreeMap, BTreeSet};

use super::errors::{MapError, SyncError};
use lb_common::{BackendId, BackendSlot, MAX_SERVICES, map_names, service_flags};
use tracing::warn;

use super::plan::FrontendPlan;
use super::{
    Departure, MapSync, ProgrammedService, Scope, ServiceMaps, SyncReport, backend_value,
    count_users, frontend_key,
};
use crate::datapath::maglev;
use crate::model::{Algorithm, BackendAddr, Frontend};

impl<M: ServiceMaps> MapSync<M> {
    /// Step 1: every backend a planned frontend needs has its entry (new
    /// ones get an ID; a known one whose locality changed is rewritten in
    /// place, its address unchanged).
    pub(super) fn ensure_backends(
        &mut self,
        needed: &BTreeSet<BackendAddr>,
        local: &BTreeSet<BackendAddr>,
        report: &mut SyncReport,
    ) {
        for addr in needed {
            let is_local = local.contains(addr);
            match self.backend_ids.get(addr) {
                Some(&id) => self.relocate_backend(addr, id, is_local, report),
                None => self.create_backend(addr, is_local, report),
            }
        }
    }

    fn relocate_backend(
        &mut self,
        addr: &BackendAddr,
        id: BackendId,
        is_local: bool,
        report: &mut SyncReport,
    ) {
        if self.backend_local.get(&id) == Some(&is_local) {
            return;
        }
        match self.maps.put_backend(id, backend_value(addr, is_local)) {
            Ok(()) => {
                self.backend_local.insert(id, is_local);
            }
            Err(source) => report.fail(SyncError::Backend {
                addr: *addr,
                source,
            }),
        }
    }

    fn create_backend(&mut self, addr: &BackendAddr, is_local: bool, report: &mut SyncReport) {
        let Some(id) = self.backend_id_alloc.allocate() else {
            report.fail(SyncError::Backend {
                addr: *addr,
                source: MapError::NoFreeId {
                    map: map_names::BACKENDS,
                    in_use: self.backend_id_alloc.max,
                },
            });
            return;
        };
        match self.maps.put_backend(id, backend_value(addr, is_local)) {
            Ok(()) => {
                self.backend_ids.insert(*addr, id);
                self.backend_addrs.insert(id, *addr);
                self.backend_local.insert(id, is_local);
                report.backends_created += 1;
            }
            Err(source) => {
                self.backend_id_alloc.release(id);
                report.fail(SyncError::Backend {
                    addr: *addr,
                    source,
                });
            }
        }
    }

    /// Step 2: each planned frontend created, or updated in place; backends
    /// that left one go into `maybe_unused` and the report's departures.
    pub(super) fn write_frontends(
        &mut self,
        wanted: &BTreeMap<Frontend, FrontendPlan>,
        maybe_unused: &mut BTreeSet<BackendId>,
        report: &mut SyncReport,
    ) {
        for (frontend, plan) in wanted {
            let target = self.target_of(plan);
            self.record_owner(frontend, plan.owner);
            if let Err(source) = self.write_frontend(frontend, target, maybe_unused, report) {
                report.fail(SyncError::Frontend {
                    name: plan.name.clone(),
                    frontend: *frontend,
                    source,
                });
            }
        }
    }

    /// The slots (one per backend, or a Maglev table) and flags of a plan:
    /// its scheduler is told to the datapath by a master-entry flag.
    fn target_of(&self, plan: &FrontendPlan) -> ProgrammedService {
        let present: Vec<(BackendAddr, BackendId)> = plan
            .backends
            .iter()
            .filter_map(|b| self.backend_ids.get(b).map(|id| (*b, *id)))
            .collect();
        let one_each = || present.iter().map(|(_, id)| *id).collect();
        let (slots, flags): (Vec<BackendId>, u16) = match plan.algorithm {
            Algorithm::Random => (one_each(), plan.flags),
            Algorithm::RoundRobin => (one_each(), plan.flags | service_flags::ROUND_ROBIN),
            Algorithm::LeastConnection => (one_each(), plan.flags | service_flags::LEAST_CONN),
            Algorithm::Maglev => {
                let addrs: Vec<BackendAddr> = present.iter().map(|(a, _)| *a).collect();
                let size = maglev::table_size_for(addrs.len(), self.selection.maglev_table_size);
                let table = maglev::table(&addrs, size);
                (
                    table.iter().map(|i| present[*i].1).collect(),
                    plan.flags | service_flags::MAGLEV,
                )
            }
        };
        ProgrammedService {
            service_id: 0,
            name: plan.name.clone(),
            affinity_timeout_s: plan.affinity_timeout_s,
            flags,
            source_ranges: plan.source_ranges.clone(),
            slots,
        }
    }

    fn record_owner(&mut self, frontend: &Frontend, owner: Frontend) {
        if let Some(previous) = self.owners.insert(*frontend, owner)
            && previous != owner
            && let Some(set) = self.owned.get_mut(&previous)
        {
            set.remove(frontend);
        }
        self.owned.entry(owner).or_default().insert(*frontend);
    }

    fn write_frontend(
        &mut self,
        frontend: &Frontend,
        target: ProgrammedService,
        maybe_unused: &mut BTreeSet<BackendId>,
        report: &mut SyncReport,
    ) -> Result<(), MapError> {
        let Some(current) = self.services.get(frontend).cloned() else {
            self.create_service(frontend, target)?;
            report.services_created += 1;
            return Ok(());
        };
        let unchanged = ProgrammedService {
            service_id: current.service_id,
            ..target.clone()
        };
        if unchanged == current {
            return Ok(());
        }
        let still: BTreeSet<BackendId> = target.slots.iter().copied().collect();
        let departed = self.departures(frontend, &current, &still);
        maybe_unused.extend(departed.iter().map(|d| d.backend_id));
        self.update_service(frontend, current, target)?;
        report.services_updated += 1;
        report.departed.extend(departed);
        Ok(())
    }

    /// The backends of `current` not in `still`, as departures.
    fn departures(
        &self,
        frontend: &Frontend,
        current: &ProgrammedService,
        still: &BTreeSet<BackendId>,
    ) -> Vec<Departure> {
        current
            .slots
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|id| !still.contains(id))
            .filter_map(|id| {
                self.backend_addrs.get(id).map(|backend| Departure {
                    frontend: *frontend,
                    service_id: current.service_id,
                    backend_id: *id,
                    backend: *backend,
                    affinity: current.affinity_timeout_s > 0,
                })
            })
            .collect()
    }

    /// Step 3: programmed frontends no plan wants any more are deleted (a
    /// scoped pass looks only at those of its service ports).
    pub(super) fn remove_gone(
        &mut self,
        wanted: &BTreeMap<Frontend, FrontendPlan>,
        scope: Scope<'_>,
        maybe_unused: &mut BTreeSet<BackendId>,
        report: &mut SyncReport,
    ) {
        let gone: Vec<Frontend> = match scope {
            Scope::All => self
                .services
                .keys()
                .filter(|f| !wanted.contains_key(f))
                .copied()
                .collect(),
            Scope::Only(keys) => keys
                .iter()
                .filter_map(|k| self.owned.get(k))
                .flatten()
                .filter(|f| !wanted.contains_key(f) && self.services.contains_key(f))
                .copied()
                .collect(),
        };
        for frontend in gone {
            let departed = self
                .services
                .get(&frontend)
                .map(|current| self.departures(&frontend, current, &BTreeSet::new()))
                .unwrap_or_default();
            maybe_unused.extend(departed.iter().map(|d| d.backend_id));
            match self.delete_service(&frontend) {
                Ok(()) => {
                    report.services_deleted += 1;
                    report.departed.extend(departed);
                }
                Err(source) => report.fail(SyncError::FrontendRemoval { frontend, source }),
            }
        }
    }

    /// Step 4: backends no slot refers to any more are removed. A full pass
    /// looks at all of them (adopted maps may hold strays), a scoped one at
    /// those that lost a user in it.
    pub(super) fn release_unused(
        &mut self,
        needed: &BTreeSet<BackendAddr>,
        scope: Scope<'_>,
        maybe_unused: &BTreeSet<BackendId>,
        report: &mut SyncReport,
    ) {
        let candidates: Vec<(BackendAddr, BackendId)> = match scope {
            Scope::All => self.backend_ids.iter().map(|(a, i)| (*a, *i)).collect(),
            Scope::Only(_) => maybe_unused
                .iter()
                .filter_map(|id| self.backend_addrs.get(id).map(|a| (*a, *id)))
                .collect(),
        };
        let unused = candidates
            .into_iter()
            .filter(|(addr, id)| !needed.contains(addr) && !self.backend_users.contains_key(id));
        for (addr, id) in unused.collect::<Vec<_>>() {
            match self.maps.delete_backend(id) {
                Ok(()) => {
                    self.backend_ids.remove(&addr);
                    self.backend_addrs.remove(&id);
                    self.backend_local.remove(&id);
                    self.backend_id_alloc.release(id);
                    report.backends_deleted += 1;
                }
                Err(source) => report.fail(SyncError::BackendRemoval { addr, source }),
            }
        }
    }

    fn write_slots(
        &mut self,
        frontend: &Frontend,
        old: &[BackendId],
        new: &[BackendId],
    ) -> Result<(), MapError> {
        for (i, id) in new.iter().enumerate() {
            if old.get(i) != Some(id) {
                let slot = u16::try_from(i + 1)
                    .map_err(|_| MapError::TooManySlots { count: new.len() })?;
                self.maps.put_service(
                    frontend_key(frontend, slot),
                    BackendSlot {
                        backend_id: *id,
                        ..Default::default()
                    },
                )?;
            }
        }
        Ok(())
    }

    fn master_value(service_id: u32, target: &ProgrammedService) -> Result<BackendSlot, MapError> {
        let count = target.slots.len();
        Ok(BackendSlot {
            backend_id: 0,
            service_id,
            count: u16::try_from(count).map_err(|_| MapError::TooManySlots { count })?,
            flags: target.flags,
            affinity_timeout_s: target.affinity_timeout_s,
        })
    }

    fn create_service(
        &mut self,
        frontend: &Frontend,
        target: ProgrammedService,
    ) -> Result<(), MapError> {
        // Validated before an ID is taken.
        Self::master_value(0, &target)?;
        let service_id = self.service_ids.allocate().ok_or(MapError::NoFreeId {
            map: map_names::SERVICES,
            in_use: MAX_SERVICES - 1,
        })?;
        let written = (|| {
            self.maps.assign_service_id(service_id, &target.name)?;
            for (ip, len) in &target.source_ranges {
                self.maps.put_source_range(service_id, *ip, *len)?;
            }
            self.write_slots(frontend, &[], &target.slots)?;
            // Publishing the master last makes the frontend visible only
            // once all its slots are filled.
            self.maps.put_service(
                frontend_key(frontend, 0),
                Self::master_value(service_id, &target)?,
            )
        })();
        if let Err(e) = written {
            self.service_ids.release(service_id);
            return Err(e);
        }
        self.record_programmed(frontend, service_id, target);
        Ok(())
    }

    /// Notes what the maps now hold for `frontend`.
    fn record_programmed(
        &mut self,
        frontend: &Frontend,
        service_id: u32,
        target: ProgrammedService,
    ) {
        count_users(&mut self.backend_users, &target.slots, 1);
        self.services.insert(
            *frontend,
            ProgrammedService {
                service_id,
                ..target
            },
        );
    }

    fn update_service(
        &mut self,
        frontend: &Frontend,
        current: ProgrammedService,
        target: ProgrammedService,
    ) -> Result<(), MapError> {
        let service_id = current.service_id;
        if current.name != target.name {
            self.maps.assign_service_id(service_id, &target.name)?;
        }
        for (ip, len) in target
            .source_ranges
            .iter()
            .filter(|r| !current.source_ranges.contains(r))
        {
            self.maps.put_source_range(service_id, *ip, *len)?;
        }
        self.write_slots(frontend, &current.slots, &target.slots)?;
        if current.slots.len() != target.slots.len()
            || current.affinity_timeout_s != target.affinity_timeout_s
            || current.flags != target.flags
        {
            self.maps.put_service(
                frontend_key(frontend, 0),
                Self::master_value(service_id, &target)?,
            )?;
        }
        // Only now that the count no longer covers them.
        for slot in target.slots.len() + 1..=current.slots.len() {
            self.maps
                .delete_service(frontend_key(frontend, slot as u16))?;
        }
        for (ip, len) in current
            .source_ranges
            .iter()
            .filter(|r| !target.source_ranges.contains(r))
        {
            self.maps.delete_source_range(service_id, *ip, *len)?;
        }
        count_users(&mut self.backend_users, &current.slots, -1);
        self.record_programmed(frontend, service_id, target);
        Ok(())
    }

    fn delete_service(&mut self, frontend: &Frontend) -> Result<(), MapError> {
        let Some(current) = self.services.get(frontend).cloned() else {
            return Ok(());
        };
        // Master first: the frontend disappears as a whole.
        self.maps.delete_service(frontend_key(frontend, 0))?;
        self.services.remove(frontend);
        if let Some(owner) = self.owners.remove(frontend)
            && let Some(set) = self.owned.get_mut(&owner)
        {
            set.remove(frontend);
            if set.is_empty() {
                self.owned.remove(&owner);
            }
        }
        count_users(&mut self.backend_users, &current.slots, -1);
        for slot in 1..=current.slots.len() {
            if let Err(e) = self
                .maps
                .delete_service(frontend_key(frontend, slot as u16))
            {
                warn!(%frontend, slot, "leaving an unreachable slot behind: {e:#}");
            }
        }
        for (ip, len) in &current.source_ranges {
            self.maps
                .delete_source_range(current.service_id, *ip, *len)?;
        }
        self.maps.release_service_id(current.service_id)?;
        self.service_ids.release(current.service_id);
        Ok(())
    }
}
