//! `ova.xml`: the XML-RPC serialisation of the exported VM's database records.
//!
//! Reading keeps to what the disk streams need: which VDIs carry data in the archive (as
//! xapi's importer decides: VDIs of non-CD VBDs whose SR is not an ISO library, plus
//! suspend images), in the order xapi streams them (sorted by their `Ref:` id as a
//! string), with their `virtual_size` and a name for each.

use crate::IngestError;
use roxmltree::{Document, Node, ParsingOptions};
use std::collections::{HashMap, HashSet};

/// Largest `ova.xml` accepted.
pub const MAX_OVA_XML: u64 = 64 << 20;
/// Most XML nodes parsed (bounds memory on hostile input).
const MAX_NODES: u32 = 2_000_000;
/// Longest disk name produced.
const MAX_NAME: usize = 64;

/// One VDI whose data the archive carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvaDisk {
    /// The VDI's id in the export ("Ref:12"): the directory of its blocks.
    pub ref_id: String,
    /// A unique, filesystem-safe name.
    pub name: String,
    /// `virtual_size` in bytes.
    pub size: u64,
}

fn corrupt(what: &str, reason: String) -> IngestError {
    IngestError::Corrupt {
        what: format!("{what} (ova.xml)"),
        format: "xva",
        offset: 0,
        reason,
    }
}

/// The element children of `node`.
fn elements<'a, 'i>(node: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(|n| n.is_element())
}

fn text_of(node: Node) -> String {
    node.children()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect()
}

/// The scalar of an XML-RPC `<value>`: its text, or the text of its typed child.
fn scalar(value: Node) -> Option<String> {
    match elements(value).next() {
        None => Some(text_of(value)),
        Some(child) => match child.tag_name().name() {
            "string" | "i4" | "int" | "i8" | "double" | "boolean" | "dateTime.iso8601" => {
                Some(text_of(child))
            }
            _ => None,
        },
    }
}

/// The members of an XML-RPC struct `<value>`.
fn members<'a, 'i>(value: Node<'a, 'i>) -> Option<Vec<(String, Node<'a, 'i>)>> {
    let st = elements(value).find(|n| n.has_tag_name("struct"))?;
    let mut out = Vec::new();
    for m in elements(st).filter(|n| n.has_tag_name("member")) {
        let name = elements(m).find(|n| n.has_tag_name("name"))?;
        let v = elements(m).find(|n| n.has_tag_name("value"))?;
        out.push((text_of(name).trim().to_string(), v));
    }
    Some(out)
}

/// The values of an XML-RPC array `<value>`.
fn array<'a, 'i>(value: Node<'a, 'i>) -> Option<Vec<Node<'a, 'i>>> {
    let arr = elements(value).find(|n| n.has_tag_name("array"))?;
    let data = elements(arr).find(|n| n.has_tag_name("data"))?;
    Some(elements(data).filter(|n| n.has_tag_name("value")).collect())
}

fn field<'a, 'i>(fields: &[(String, Node<'a, 'i>)], key: &str) -> Option<Node<'a, 'i>> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn field_str(fields: &[(String, Node)], key: &str) -> Option<String> {
    field(fields, key).and_then(scalar)
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let f: f64 = s.parse().ok()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 9.0e18).then_some(f as u64)
}

/// Makes `raw` safe as a file name: ASCII letters, digits, `.`, `_`, `-`; no leading dot.
pub fn sanitize(raw: &str) -> String {
    let mut s: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect();
    while s.starts_with('.') || s.starts_with('-') {
        s.remove(0);
    }
    if s.chars().all(|c| c == '_') {
        s.clear();
    }
    s
}

struct Vdi {
    id: String,
    size: Option<u64>,
    name_label: String,
    sr: String,
    suspend: bool,
}

struct Vbd {
    vdi: String,
    cd: bool,
    device: String,
}

/// Parses `ova.xml` and lists the VDIs the archive streams, in stream order.
pub fn parse_disks(xml: &[u8], what: &str) -> Result<Vec<OvaDisk>, IngestError> {
    let text = std::str::from_utf8(xml).map_err(|e| corrupt(what, format!("not UTF-8: {e}")))?;
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text, opts)
        .map_err(|e| corrupt(what, format!("not well-formed XML: {e}")))?;
    let root = doc.root_element();
    if !root.has_tag_name("value") {
        return Err(corrupt(
            what,
            format!("root element is <{}>, not <value>", root.tag_name().name()),
        ));
    }
    let top = members(root).ok_or_else(|| corrupt(what, "root is not a struct".into()))?;
    let objects = field(&top, "objects")
        .and_then(array)
        .ok_or_else(|| corrupt(what, "no 'objects' array".into()))?;

    let mut vdis: Vec<Vdi> = Vec::new();
    let mut vbds: Vec<Vbd> = Vec::new();
    let mut sr_content: HashMap<String, String> = HashMap::new();
    let mut seen_ids: HashSet<String> = HashSet::new();
    for (i, obj) in objects.iter().enumerate() {
        let fields =
            members(*obj).ok_or_else(|| corrupt(what, format!("object {i} is not a struct")))?;
        let class = field_str(&fields, "class").unwrap_or_default();
        let id = field_str(&fields, "id").unwrap_or_default();
        let snap = field(&fields, "snapshot").and_then(members);
        let (Some(snap), false) = (snap, id.is_empty()) else {
            if matches!(class.as_str(), "VDI" | "VBD" | "SR") {
                return Err(corrupt(
                    what,
                    format!("{class} object {i} lacks an id or a snapshot struct"),
                ));
            }
            continue;
        };
        match class.as_str() {
            "VDI" => {
                if !seen_ids.insert(id.clone()) {
                    return Err(corrupt(what, format!("VDI {id} is listed twice")));
                }
                vdis.push(Vdi {
                    size: field_str(&snap, "virtual_size").and_then(|s| parse_size(&s)),
                    name_label: field_str(&snap, "name_label").unwrap_or_default(),
                    sr: field_str(&snap, "SR").unwrap_or_default(),
                    suspend: field_str(&snap, "type")
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("suspend")),
                    id,
                });
            }
            "VBD" => vbds.push(Vbd {
                vdi: field_str(&snap, "VDI").unwrap_or_default(),
                cd: field_str(&snap, "type").is_some_and(|t| t.trim().eq_ignore_ascii_case("cd")),
                device: field_str(&snap, "device").unwrap_or_default(),
            }),
            "SR" => {
                sr_content.insert(id, field_str(&snap, "content_type").unwrap_or_default());
            }
            _ => {}
        }
    }

    let is_iso = |sr: &str| sr_content.get(sr).is_some_and(|c| c.trim() == "iso");
    let by_id: HashMap<&str, &Vdi> = vdis.iter().map(|v| (v.id.as_str(), v)).collect();
    let disk_vdis: HashSet<&str> = vbds
        .iter()
        .filter(|b| !b.cd)
        .filter(|b| by_id.get(b.vdi.as_str()).is_some_and(|v| !is_iso(&v.sr)))
        .map(|b| b.vdi.as_str())
        .collect();
    let mut chosen: Vec<&Vdi> = vdis
        .iter()
        .filter(|v| v.suspend || disk_vdis.contains(v.id.as_str()))
        .collect();
    // xapi streams VDIs sorted by their export id as a string ("Ref:10" < "Ref:9").
    chosen.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));

    let mut used: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(chosen.len());
    for (n, v) in chosen.into_iter().enumerate() {
        let size = v
            .size
            .ok_or_else(|| corrupt(what, format!("VDI {} has no valid virtual_size", v.id)))?;
        if size > i64::MAX as u64 {
            return Err(corrupt(
                what,
                format!("VDI {} virtual_size {size} is absurd", v.id),
            ));
        }
        let device = vbds
            .iter()
            .find(|b| !b.cd && b.vdi == v.id)
            .map(|b| sanitize(&b.device))
            .unwrap_or_default();
        let mut name = if v.suspend {
            "suspend".to_string()
        } else if !device.is_empty() {
            device
        } else {
            sanitize(&v.name_label)
        };
        if name.is_empty() {
            name = format!("disk{n}");
        }
        if used.contains(&name) {
            let base = name.clone();
            let mut k = n;
            loop {
                name = format!("{base}-{k}");
                if !used.contains(&name) {
                    break;
                }
                k += 1;
            }
        }
        used.insert(name.clone());
        out.push(OvaDisk {
            ref_id: v.id.clone(),
            name,
            size,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Generation.

/// An XML-RPC value to serialise.
enum V {
    S(String),
    B(bool),
    Date(&'static str),
    D(&'static str),
    Arr(Vec<V>),
    St(Vec<(String, V)>),
}

fn s(v: impl Into<String>) -> V {
    V::S(v.into())
}

fn st(fields: Vec<(&str, V)>) -> V {
    V::St(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn empty_struct() -> V {
    V::St(Vec::new())
}

fn empty_array() -> V {
    V::Arr(Vec::new())
}

fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => out.push(' '),
            c => out.push(c),
        }
    }
}

fn emit(out: &mut String, v: &V) {
    out.push_str("<value>");
    match v {
        V::S(t) => escape(out, t),
        V::B(b) => out.push_str(if *b {
            "<boolean>1</boolean>"
        } else {
            "<boolean>0</boolean>"
        }),
        V::Date(d) => {
            out.push_str("<dateTime.iso8601>");
            out.push_str(d);
            out.push_str("</dateTime.iso8601>");
        }
        V::D(d) => {
            out.push_str("<double>");
            out.push_str(d);
            out.push_str("</double>");
        }
        V::Arr(items) => {
            out.push_str("<array><data>");
            for i in items {
                emit(out, i);
            }
            out.push_str("</data></array>");
        }
        V::St(fields) => {
            out.push_str("<struct>");
            for (k, v) in fields {
                out.push_str("<member><name>");
                escape(out, k);
                out.push_str("</name>");
                emit(out, v);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// A random-looking (version 4 layout) UUID derived from `seed` and the clock.
fn uuid(seed: &str, n: usize) -> String {
    use sha1::{Digest, Sha1};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha1::new();
    h.update(seed.as_bytes());
    h.update(n.to_le_bytes());
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

const NULL: &str = "OpaqueRef:NULL";
const NEVER: &str = "19700101T00:00:00Z";

/// Builds a minimal `ova.xml` for a halted HVM VM `vm_name` with one VBD + VDI per disk
/// (`(name, size)`), all on one placeholder SR. Returns the XML and the VDI ids, which
/// sort in the order of `disks` (so xapi streams them in that order).
pub fn generate(vm_name: &str, disks: &[(String, u64)]) -> (Vec<u8>, Vec<String>) {
    let seed = format!("{vm_name}/{}", disks.len());
    let vm_id = "Ref:0".to_string();
    let sr_id = "Ref:1".to_string();
    let vdi_ids: Vec<String> = (0..disks.len())
        .map(|i| format!("Ref:{}", 100_000 + i))
        .collect();
    let vbd_ids: Vec<String> = (0..disks.len())
        .map(|i| format!("Ref:{}", 200_000 + i))
        .collect();
    let refs = |ids: &[String]| V::Arr(ids.iter().map(|i| s(i.clone())).collect());

    let vm = st(vec![
        ("uuid", s(uuid(&seed, 0))),
        ("allowed_operations", empty_array()),
        ("current_operations", empty_struct()),
        ("power_state", s("Halted")),
        ("name_label", s(vm_name)),
        ("name_description", s("restored by vmvault")),
        ("user_version", s("1")),
        ("is_a_template", V::B(false)),
        ("is_default_template", V::B(false)),
        ("suspend_VDI", s(NULL)),
        ("resident_on", s(NULL)),
        ("scheduled_to_be_resident_on", s(NULL)),
        ("affinity", s(NULL)),
        ("memory_overhead", s("0")),
        ("memory_target", s("1073741824")),
        ("memory_static_max", s("1073741824")),
        ("memory_dynamic_max", s("1073741824")),
        ("memory_dynamic_min", s("1073741824")),
        ("memory_static_min", s("1073741824")),
        ("VCPUs_params", empty_struct()),
        ("VCPUs_max", s("1")),
        ("VCPUs_at_startup", s("1")),
        ("actions_after_shutdown", s("destroy")),
        ("actions_after_reboot", s("restart")),
        ("actions_after_crash", s("restart")),
        ("consoles", empty_array()),
        ("VIFs", empty_array()),
        ("VBDs", refs(&vbd_ids)),
        ("VUSBs", empty_array()),
        ("crash_dumps", empty_array()),
        ("VTPMs", empty_array()),
        ("PV_bootloader", s("")),
        ("PV_kernel", s("")),
        ("PV_ramdisk", s("")),
        ("PV_args", s("")),
        ("PV_bootloader_args", s("")),
        ("PV_legacy_args", s("")),
        ("HVM_boot_policy", s("BIOS order")),
        (
            "HVM_boot_params",
            st(vec![("order", s("cdn")), ("firmware", s("bios"))]),
        ),
        ("HVM_shadow_multiplier", V::D("1.000000")),
        (
            "platform",
            st(vec![
                ("timeoffset", s("0")),
                ("device-model", s("qemu-upstream-compat")),
                ("nx", s("true")),
                ("acpi", s("1")),
                ("apic", s("true")),
                ("pae", s("true")),
                ("hpet", s("true")),
                ("viridian", s("true")),
                ("secureboot", s("false")),
            ]),
        ),
        ("PCI_bus", s("")),
        (
            "other_config",
            st(vec![("base_template_name", s("Other install media"))]),
        ),
        ("domid", s("-1")),
        ("domarch", s("")),
        ("last_boot_CPU_flags", empty_struct()),
        ("is_control_domain", V::B(false)),
        ("metrics", s(NULL)),
        ("guest_metrics", s(NULL)),
        ("last_booted_record", s("")),
        ("recommendations", s("")),
        ("xenstore_data", empty_struct()),
        ("ha_always_run", V::B(false)),
        ("ha_restart_priority", s("")),
        ("is_a_snapshot", V::B(false)),
        ("snapshot_of", s(NULL)),
        ("snapshots", empty_array()),
        ("snapshot_time", V::Date(NEVER)),
        ("transportable_snapshot_id", s("")),
        ("blobs", empty_struct()),
        ("tags", empty_array()),
        ("blocked_operations", empty_struct()),
        ("snapshot_info", empty_struct()),
        ("snapshot_metadata", s("")),
        ("parent", s(NULL)),
        ("children", empty_array()),
        ("bios_strings", empty_struct()),
        ("protection_policy", s(NULL)),
        ("is_snapshot_from_vmpp", V::B(false)),
        ("snapshot_schedule", s(NULL)),
        ("is_vmss_snapshot", V::B(false)),
        ("appliance", s(NULL)),
        ("start_delay", s("0")),
        ("shutdown_delay", s("0")),
        ("order", s("0")),
        ("VGPUs", empty_array()),
        ("attached_PCIs", empty_array()),
        ("suspend_SR", s(NULL)),
        ("version", s("0")),
        ("generation_id", s("")),
        ("hardware_platform_version", s("0")),
        ("has_vendor_device", V::B(false)),
        ("requires_reboot", V::B(false)),
        ("reference_label", s("")),
        ("domain_type", s("hvm")),
        ("NVRAM", empty_struct()),
    ]);

    let mut objects = vec![st(vec![
        ("class", s("VM")),
        ("id", s(vm_id.clone())),
        ("snapshot", vm),
    ])];
    for (i, (name, size)) in disks.iter().enumerate() {
        let vbd = st(vec![
            ("uuid", s(uuid(&seed, 1000 + i))),
            ("allowed_operations", empty_array()),
            ("current_operations", empty_struct()),
            ("VM", s(vm_id.clone())),
            ("VDI", s(vdi_ids[i].clone())),
            ("device", s("")),
            ("userdevice", s(i.to_string())),
            ("bootable", V::B(i == 0)),
            ("mode", s("RW")),
            ("type", s("Disk")),
            ("unpluggable", V::B(false)),
            ("storage_lock", V::B(false)),
            ("empty", V::B(false)),
            ("other_config", empty_struct()),
            ("currently_attached", V::B(false)),
            ("status_code", s("0")),
            ("status_detail", s("")),
            ("runtime_properties", empty_struct()),
            ("qos_algorithm_type", s("")),
            ("qos_algorithm_params", empty_struct()),
            ("qos_supported_algorithms", empty_array()),
            ("metrics", s(NULL)),
        ]);
        objects.push(st(vec![
            ("class", s("VBD")),
            ("id", s(vbd_ids[i].clone())),
            ("snapshot", vbd),
        ]));
        let vdi = st(vec![
            ("uuid", s(uuid(&seed, 2000 + i))),
            ("name_label", s(name.clone())),
            ("name_description", s("")),
            ("allowed_operations", empty_array()),
            ("current_operations", empty_struct()),
            ("SR", s(sr_id.clone())),
            ("VBDs", refs(std::slice::from_ref(&vbd_ids[i]))),
            ("crash_dumps", empty_array()),
            ("virtual_size", s(size.to_string())),
            ("physical_utilisation", s(size.to_string())),
            ("type", s("user")),
            ("sharable", V::B(false)),
            ("read_only", V::B(false)),
            ("other_config", empty_struct()),
            ("storage_lock", V::B(false)),
            ("location", s("")),
            ("managed", V::B(true)),
            ("missing", V::B(false)),
            ("parent", s(NULL)),
            ("xenstore_data", empty_struct()),
            ("sm_config", empty_struct()),
            ("is_a_snapshot", V::B(false)),
            ("snapshot_of", s(NULL)),
            ("snapshots", empty_array()),
            ("snapshot_time", V::Date(NEVER)),
            ("tags", empty_array()),
            ("allow_caching", V::B(false)),
            ("on_boot", s("persist")),
            ("metadata_of_pool", s(NULL)),
            ("metadata_latest", V::B(false)),
            ("is_tools_iso", V::B(false)),
            ("cbt_enabled", V::B(false)),
        ]);
        objects.push(st(vec![
            ("class", s("VDI")),
            ("id", s(vdi_ids[i].clone())),
            ("snapshot", vdi),
        ]));
    }
    let sr = st(vec![
        ("uuid", s(uuid(&seed, 1))),
        ("name_label", s("vmvault restore")),
        ("name_description", s("")),
        ("allowed_operations", empty_array()),
        ("current_operations", empty_struct()),
        ("VDIs", refs(&vdi_ids)),
        ("PBDs", empty_array()),
        ("virtual_allocation", s("0")),
        ("physical_utilisation", s("0")),
        ("physical_size", s("0")),
        ("type", s("ext")),
        ("content_type", s("user")),
        ("shared", V::B(false)),
        ("other_config", empty_struct()),
        ("tags", empty_array()),
        ("sm_config", empty_struct()),
        ("blobs", empty_struct()),
        ("local_cache_enabled", V::B(false)),
        ("introduced_by", s(NULL)),
        ("clustered", V::B(false)),
        ("is_tools_sr", V::B(false)),
    ]);
    objects.push(st(vec![
        ("class", s("SR")),
        ("id", s(sr_id)),
        ("snapshot", sr),
    ]));

    let version = st(vec![
        ("hostname", s("vmvault")),
        ("date", s("2024-01-01")),
        ("product_version", s("8.2.1")),
        ("product_brand", s("XCP-ng")),
        ("build_number", s("vmvault")),
        ("xapi_major", s("1")),
        ("xapi_minor", s("20")),
        ("export_vsn", s("2")),
    ]);
    let top = st(vec![("version", version), ("objects", V::Arr(objects))]);
    let mut xml = String::from("<?xml version=\"1.0\"?>");
    emit(&mut xml, &top);
    (xml.into_bytes(), vdi_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_xml_lists_its_disks_in_order() {
        let disks: Vec<(String, u64)> = (0..12)
            .map(|i| (format!("disk <{i}> & co"), (i as u64 + 1) << 20))
            .collect();
        let (xml, ids) = generate("my \"vm\"", &disks);
        let parsed = parse_disks(&xml, "t").unwrap();
        assert_eq!(parsed.len(), 12);
        for (i, d) in parsed.iter().enumerate() {
            assert_eq!(d.ref_id, ids[i]);
            assert_eq!(d.size, disks[i].1);
            assert_eq!(d.name, format!("disk__{i}____co"));
        }
    }

    #[test]
    fn cd_and_iso_vdis_are_not_streamed_and_order_is_lexicographic() {
        let vdi = |id: &str, size: &str, sr: &str, ty: &str| {
            format!(
                "<value><struct><member><name>class</name><value>VDI</value></member>\
                 <member><name>id</name><value>{id}</value></member>\
                 <member><name>snapshot</name><value><struct>\
                 <member><name>virtual_size</name><value>{size}</value></member>\
                 <member><name>SR</name><value>{sr}</value></member>\
                 <member><name>type</name><value>{ty}</value></member>\
                 <member><name>name_label</name><value>x/y</value></member>\
                 </struct></value></member></struct></value>"
            )
        };
        let vbd = |id: &str, vdi: &str, ty: &str, dev: &str| {
            format!(
                "<value><struct><member><name>class</name><value>VBD</value></member>\
                 <member><name>id</name><value>{id}</value></member>\
                 <member><name>snapshot</name><value><struct>\
                 <member><name>VDI</name><value>{vdi}</value></member>\
                 <member><name>type</name><value>{ty}</value></member>\
                 <member><name>device</name><value>{dev}</value></member>\
                 </struct></value></member></struct></value>"
            )
        };
        let sr = |id: &str, ct: &str| {
            format!(
                "<value><struct><member><name>class</name><value>SR</value></member>\
                 <member><name>id</name><value>{id}</value></member>\
                 <member><name>snapshot</name><value><struct>\
                 <member><name>content_type</name><value>{ct}</value></member>\
                 </struct></value></member></struct></value>"
            )
        };
        let objs = [
            vbd("Ref:1", "Ref:9", "Disk", "xvda"),
            vbd("Ref:2", "Ref:10", "Disk", ""),
            vbd("Ref:3", "Ref:11", "CD", "xvdd"),
            vbd("Ref:4", "Ref:12", "Disk", "xvdc"),
            vdi("Ref:9", "1048576", "Ref:20", "user"),
            vdi("Ref:10", "<i8>2097152</i8>", "Ref:20", "user"),
            vdi("Ref:11", "5", "Ref:21", "user"),
            vdi("Ref:12", "7", "Ref:21", "user"),
            vdi("Ref:13", "4096", "Ref:20", "suspend"),
            sr("Ref:20", "user"),
            sr("Ref:21", "iso"),
        ]
        .concat();
        let xml = format!(
            "<?xml version=\"1.0\"?>\n<value> <struct><member><name>objects</name>\
             <value><array><data>{objs}</data></array></value></member></struct></value>"
        );
        let d = parse_disks(xml.as_bytes(), "t").unwrap();
        let got: Vec<(&str, &str, u64)> = d
            .iter()
            .map(|d| (d.ref_id.as_str(), d.name.as_str(), d.size))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Ref:10", "x_y", 2097152),
                ("Ref:13", "suspend", 4096),
                ("Ref:9", "xvda", 1048576)
            ]
        );
    }

    #[test]
    fn hostile_xml_is_refused() {
        for bad in [
            &b"<value><struct></value>"[..],
            b"<!DOCTYPE x [<!ENTITY a \"b\">]><value/>",
            b"<foo/>",
            b"\xff\xfe",
            b"<value><struct><member><name>objects</name><value><array><data>\
              <value><struct><member><name>class</name><value>VDI</value></member>\
              <member><name>id</name><value>Ref:1</value></member>\
              <member><name>snapshot</name><value><struct>\
              <member><name>type</name><value>suspend</value></member>\
              <member><name>virtual_size</name><value>-5</value></member>\
              </struct></value></member></struct></value>\
              </data></array></value></member></struct></value>",
        ] {
            assert!(parse_disks(bad, "t").is_err());
        }
    }
}
