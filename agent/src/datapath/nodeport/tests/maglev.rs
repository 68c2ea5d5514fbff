//! Maglev tables: the entry the program reads, batch installs, an older pinned layout.

use super::*;

/// The programs' flow hash (`hash` in `ebpf/programs/src/maglev.rs`), transcribed: `MurmurHash3`
/// rounds over the client address, the frontend, both ports as they lie in the packet (network
/// order, read as little-endian `u16`s) and the protocol. Only to predict which entry of a table
/// the program reads; if the two drift apart, the test below fails.
fn flow_hash(saddr: [u8; 16], daddr: [u8; 16], sport: u16, dport: u16, proto: u8) -> u32 {
    fn mix(h: u32, k: u32) -> u32 {
        let k = k
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
        (h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64)
    }
    fn mix_address(mut h: u32, a: [u8; 16]) -> u32 {
        for word in a.chunks_exact(4) {
            h = mix(h, u32::from_le_bytes(word.try_into().unwrap()));
        }
        h
    }
    let mut h = mix_address(0x6761_6e6e, saddr);
    h = mix_address(h, daddr);
    let wire = |port: u16| u32::from(u16::from_le_bytes(port.to_be_bytes()));
    h = mix(h, (wire(sport) << 16) | wire(dport));
    h = mix(h, u32::from(proto));
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A table is stored two backend ids to a value: the program must read entry `hash % m` of it,
/// neither its neighbour nor another value. Every entry of the table names a backend of its own,
/// so the backend a new flow is tracked with says which entry the program read.
#[test]
fn the_program_reads_the_entry_the_flow_hashes_to() {
    let node = FixtureNode::new();
    let failures = node.with_programs(
        |Loaded {
             mut fp,
             mut maglev,
             size,
             mut services,
             mut backends,
         }| {
            const FIRST_ID: u32 = 1000;
            let m = u32::try_from(size).unwrap();
            let table: Vec<u32> = (0..m).map(|i| FIRST_ID + i).collect();
            for i in 0..m {
                let port = 9000 + u16::try_from(i).unwrap();
                backends
                    .insert(FIRST_ID + i, backend(REMOTE_POD, port), 0)
                    .unwrap();
            }
            services
                .insert(frontend(NODE, NODE_PORT), service(8, SVC_F_EXTERNAL), 0)
                .unwrap();
            maglev.put(8, &table).unwrap();
            assert_eq!(maglev.get(8), Some(table), "the table read back");
            enable_v4(&mut fp, m, 0);
            let mut failures = Vec::new();
            let (mut even, mut odd) = (0, 0);
            for port in 42000..42064u16 {
                let frame = tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, port, NODE, NODE_PORT, 64, SYN);
                let mut out = vec![0u8; frame.len() + 64];
                let result = fp
                    .nodeport_program()
                    .unwrap()
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        data_out: Some(&mut out),
                        ..TestRunOptions::default()
                    })
                    .expect("BPF_PROG_TEST_RUN");
                let index = flow_hash(
                    v4_mapped(CLIENT.octets()),
                    v4_mapped(NODE.octets()),
                    port,
                    NODE_PORT,
                    PROTO_TCP,
                ) % m;
                if index.is_multiple_of(2) {
                    even += 1;
                } else {
                    odd += 1;
                }
                let tracked = fp.nodeport.conntrack_entries().into_iter().find(|(k, e)| {
                    e.flags & CT_F_REPLY == 0 && e.service_id == 8 && k.sport == port.to_be()
                });
                match tracked {
                    Some((_, entry)) if entry.backend_id == FIRST_ID + index => {}
                    other => failures.push(format!(
                        "client port {port}: verdict {}, expected entry {index} (backend {}), \
                         tracked {:?}",
                        result.return_value,
                        FIRST_ID + index,
                        other.map(|(_, e)| e.backend_id)
                    )),
                }
            }
            assert!(
                even > 0 && odd > 0,
                "the flows must hit both halves of the values ({even} even, {odd} odd entries)"
            );
            failures
        },
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The tables through the real maps: many installed with one batch, read back through a memory
/// mapping, two ids to an 8-byte value; installs past the outer map's capacity fail one by one
/// and the rest still go in; removals (of missing tables too) and replacements in a batch.
#[test]
fn tables_are_installed_and_removed_in_batches() {
    let node = FixtureNode::new();
    let failures = node.with_programs(
        |Loaded {
             fp: _fp,
             mut maglev,
             size,
             ..
         }| {
            let m = u32::try_from(size).unwrap();
            let capacity = small_capacity().external;
            let table = |id: u32| -> Vec<u32> { (0..m).map(|i| id * 1000 + i % 7).collect() };
            let mut failures = Vec::new();

            // Six more than fit.
            for id in 1..=capacity + 6 {
                maglev.stage(id, &table(id)).unwrap();
            }
            assert_eq!(maglev.staged(), capacity as usize + 6);
            let started = std::time::Instant::now();
            let failed = maglev.flush();
            eprintln!("{} tables installed in {:?}", capacity, started.elapsed());
            assert_eq!(maglev.staged(), 0, "a flush leaves nothing staged");
            let failed_ids: Vec<u32> = failed.iter().map(|(id, _)| *id).collect();
            if failed_ids != (capacity + 1..=capacity + 6).collect::<Vec<_>>() {
                failures.push(format!(
                    "expected the 6 tables past the capacity to fail, failed: {failed:?}"
                ));
            }
            if maglev.service_ids() != (1..=capacity).collect() {
                failures.push(format!("installed: {:?}", maglev.service_ids()));
            }
            for id in [1, 2, capacity / 2, capacity] {
                if maglev.get(id) != Some(table(id)) {
                    failures.push(format!("table {id} read back wrong: {:?}", maglev.get(id)));
                }
            }

            // The layout: ceil(m / 2) values of 8 bytes, entry i in half i % 2 of value i / 2.
            let outer: aya::maps::HashOfMaps<MapData, u32, MapData> =
                aya::maps::HashOfMaps::try_from(Map::HashOfMaps(
                    MapData::from_pin(node.bpf_root.path().join("maps").join(map_names::MAGLEV))
                        .unwrap(),
                ))
                .unwrap();
            let info = outer.get(&3, 0).unwrap().info().unwrap();
            if (info.value_size(), info.max_entries()) != (8, m.div_ceil(2)) {
                failures.push(format!(
                    "inner map: values of {} bytes × {}, expected 8 × {}",
                    info.value_size(),
                    info.max_entries(),
                    m.div_ceil(2)
                ));
            }
            let inner =
                super::super::TableMap::try_from(Map::Array(outer.get(&3, 0).unwrap())).unwrap();
            let t = table(3);
            for (k, pair) in [0u32, 1, m / 2 - 1, m / 2]
                .into_iter()
                .map(|k| (k, inner.get(&k, 0).unwrap()))
            {
                let odd = t.get(2 * k as usize + 1).copied().unwrap_or(0);
                if pair != gannet_common::maglev_pack(t[2 * k as usize], odd) {
                    failures.push(format!("value {k} is {pair:#x}"));
                }
            }

            // Removals (one of a table that is not there) and a replacement, in one batch.
            for id in 1..=10 {
                maglev.stage_remove(id);
            }
            maglev.stage_remove(999);
            maglev.stage(11, &table(12)).unwrap();
            let failed = maglev.flush();
            if !failed.is_empty() {
                failures.push(format!("removals and a replacement failed: {failed:?}"));
            }
            if maglev.service_ids() != (11..=capacity).collect() {
                failures.push(format!("after removals: {:?}", maglev.service_ids()));
            }
            if maglev.get(11) != Some(table(12)) {
                failures.push("table 11 was not replaced".to_owned());
            }
            // One at a time, too.
            maglev.remove(11).unwrap();
            maglev.remove(11).unwrap();
            maglev.put(11, &table(11)).unwrap();
            if maglev.get(11) != Some(table(11)) {
                failures.push("table 11 was not put back".to_owned());
            }
            failures
        },
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A pinned Maglev map of the older layout (one `u32` id per value) would make the programs fail
/// to load: it is replaced, and the tables work.
#[test]
fn an_older_pinned_maglev_map_is_replaced() {
    let node = FixtureNode::new();
    let maps_dir = node.bpf_root.path().join("maps");
    std::fs::create_dir_all(&maps_dir).unwrap();
    let pin = maps_dir.join(map_names::MAGLEV);
    let size = small_capacity().maglev_table_size;
    // The old layout's outer map: BPF_MAP_CREATE of a hash of maps (13) whose template is an
    // array (2) of u32 values.
    let template =
        aya::maps::Array::<MapData, u32>::create(size, super::super::TABLE_FLAGS).unwrap();
    let mut attr = [0u32; 32];
    attr[..6].copy_from_slice(&[
        13,
        4,
        4,
        small_capacity().external,
        0,
        u32::try_from(template.map().fd().as_fd().as_raw_fd()).unwrap(),
    ]);
    // SAFETY: a zero-tailed `union bpf_attr` for BPF_MAP_CREATE (0).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "creating the old map: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel returned a new descriptor that we own.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) };
    MapData::from_fd(owned).unwrap().pin(&pin).unwrap();

    let failures = node.with_programs(
        |Loaded {
             fp: _fp,
             mut maglev,
             size,
             ..
         }| {
            let mut failures = Vec::new();
            maglev.put(1, &vec![5; size]).unwrap();
            if maglev.get(1) != Some(vec![5; size]) {
                failures.push("the new map does not hold the table".to_owned());
            }
            failures
        },
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A map of this layout stays.
    super::super::retire_incompatible_maglev(&maps_dir).unwrap();
    assert!(pin.exists(), "a pinned map of this layout must stay");
}
