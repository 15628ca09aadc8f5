//! Which rule files are whose: `--rules FILE` holds the default tenant's rules; `--rules DIR`
//! holds the default tenant's rule files at its top level and one sub-directory per other
//! tenant, named by the tenant id (the layout of Mimir's ruler and Tempo's per-tenant
//! overrides). Only the top level of each directory is read. Design notes: DESIGN.md, "Tenants".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::AlertError;
use super::rules::{self, Group};
use crate::tenant::{self, DEFAULT_TENANT};

/// Each tenant's rule files, by tenant id. The default tenant is always there (its files may
/// be none).
pub type TenantFiles = BTreeMap<String, Vec<PathBuf>>;

/// Each tenant's groups, by tenant id; every group's `tenant` is its key.
pub type TenantGroups = BTreeMap<String, Vec<Group>>;

/// What one directory holds: its rule files (`*.yml` / `*.yaml`, sorted; `*.test.yml` promtool
/// unit-test files skipped, so a directory can hold both) and its sub-directories by name.
struct Listing {
    files: Vec<PathBuf>,
    dirs: Vec<(String, PathBuf)>,
}

fn list(dir: &Path) -> Result<Listing, AlertError> {
    let read_err = |source| AlertError::Read { path: dir.to_path_buf(), source };
    let mut out = Listing { files: Vec::new(), dirs: Vec::new() };
    for e in std::fs::read_dir(dir).map_err(read_err)? {
        let e = e.map_err(read_err)?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            out.dirs.push((name, p));
            continue;
        }
        let yaml = name.ends_with(".yml") || name.ends_with(".yaml");
        let test = name.ends_with(".test.yml") || name.ends_with(".test.yaml");
        if yaml && !test && p.is_file() {
            out.files.push(p);
        }
    }
    out.files.sort();
    out.dirs.sort();
    Ok(out)
}

/// The rule files of every tenant under `path`. A sub-directory whose name is not a tenant id
/// is an error naming it; hidden ones (`.git`, the `..data` and `..<timestamp>` directories of
/// a Kubernetes ConfigMap volume) are skipped, since they are not meant as tenants.
pub fn tenant_files(path: &Path) -> Result<TenantFiles, Vec<AlertError>> {
    let (files, errors) = scan(path).map_err(|e| vec![e])?;
    if errors.is_empty() { Ok(files) } else { Err(errors) }
}

/// The tenants' files, and the sub-directories that name no tenant as errors.
fn scan(path: &Path) -> Result<(TenantFiles, Vec<AlertError>), AlertError> {
    let meta = std::fs::metadata(path)
        .map_err(|source| AlertError::Read { path: path.to_path_buf(), source })?;
    let mut out = TenantFiles::new();
    let mut errors = Vec::new();
    if !meta.is_dir() {
        out.insert(DEFAULT_TENANT.to_string(), vec![path.to_path_buf()]);
        return Ok((out, errors));
    }
    let top = list(path)?;
    out.insert(DEFAULT_TENANT.to_string(), top.files);
    for (name, dir) in top.dirs {
        if name.starts_with('.') {
            continue;
        }
        match tenant::validate(Some(name.as_bytes())) {
            Ok(t) => match list(&dir) {
                Ok(l) => out.entry(t).or_default().extend(l.files),
                Err(e) => errors.push(e),
            },
            Err(source) => errors.push(AlertError::TenantDir { path: dir, source }),
        }
    }
    Ok((out, errors))
}

/// Loads every tenant's rule files under `path`; every problem in the layout and in any file
/// is returned.
pub fn load(path: &Path) -> Result<TenantGroups, Vec<AlertError>> {
    let (files, mut errors) = scan(path).map_err(|e| vec![e])?;
    let mut out = TenantGroups::new();
    for (tenant, files) in files {
        let groups = out.entry(tenant.clone()).or_default();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => match rules::parse_file(&f, &text) {
                    Ok(g) => {
                        groups.extend(g.into_iter().map(|g| Group { tenant: tenant.clone(), ..g }))
                    }
                    Err(e) => errors.extend(e),
                },
                Err(source) => errors.push(AlertError::Read { path: f, source }),
            }
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Every tenant's groups in one list (tenant by tenant), as evaluation takes them.
pub fn load_groups(path: &Path) -> Result<Vec<Group>, Vec<AlertError>> {
    load(path).map(|t| t.into_values().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str =
        "groups:\n  - name: g\n    rules:\n      - alert: Slow\n        expr: up > 1\n";

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, text).unwrap();
    }

    fn counts(t: &TenantGroups) -> Vec<(&str, usize)> {
        t.iter().map(|(k, g)| (k.as_str(), g.len())).collect()
    }

    #[test]
    fn top_level_files_are_the_default_tenants_and_sub_directories_name_tenants() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.yml", RULE);
        write(d.path(), "b.yaml", "groups:\n  - name: g2\n    rules: []\n");
        write(d.path(), "a.test.yml", "not: [rules");
        write(d.path(), "notes.txt", "not rules");
        write(d.path(), "team-a/x.yml", RULE);
        write(d.path(), "team-a/y.yml", RULE.replace("name: g", "name: h").as_str());
        write(d.path(), "team-a/nested/z.yml", "not: [rules");
        write(d.path(), "team.b_2/x.yml", RULE);
        // A Kubernetes ConfigMap volume: hidden directories beside symlinks into them.
        write(d.path(), "..data/c.yml", "not: [rules");
        write(d.path(), ".git/d.yml", "not: [rules");
        let t = load(d.path()).unwrap();
        assert_eq!(counts(&t), vec![(DEFAULT_TENANT, 2), ("team-a", 2), ("team.b_2", 1)]);
        for (tenant, groups) in &t {
            assert!(groups.iter().all(|g| &g.tenant == tenant), "{tenant}: {groups:?}");
        }
        assert!(t["team-a"][0].file.ends_with("team-a/x.yml"), "{:?}", t["team-a"][0].file);
        assert_eq!(load_groups(d.path()).unwrap().len(), 5);
    }

    #[test]
    fn a_file_is_the_default_tenants() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "team-a.yml", RULE);
        let t = load(&d.path().join("team-a.yml")).unwrap();
        assert_eq!(counts(&t), vec![(DEFAULT_TENANT, 1)]);
    }

    #[test]
    fn a_sub_directory_that_is_no_tenant_id_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.yml", RULE);
        write(d.path(), "team a/x.yml", RULE);
        write(d.path(), "b@c/x.yml", RULE);
        write(d.path(), "ok/x.yml", "groups: [{name: g, rules: [{alert: A, expr: 'sum('}]}]");
        let errs: Vec<String> = load(d.path()).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("b@c") && errs[0].contains("tenant id"), "{errs:?}");
        assert!(errs[1].contains("team a") && errs[1].contains("tenant id"), "{errs:?}");
        assert!(errs[2].contains("ok/x.yml"), "valid tenants' files are still checked: {errs:?}");
        let long = "x".repeat(tenant::MAX_LEN + 1);
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &format!("{long}/x.yml"), RULE);
        let errs = load(d.path()).unwrap_err();
        assert!(errs[0].to_string().contains(&long), "{errs:?}");
    }

    #[test]
    fn an_empty_directory_is_no_rules_and_a_tenant_directory_may_be_empty() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(counts(&load(d.path()).unwrap()), vec![(DEFAULT_TENANT, 0)]);
        std::fs::create_dir(d.path().join("team-a")).unwrap();
        assert_eq!(counts(&load(d.path()).unwrap()), vec![(DEFAULT_TENANT, 0), ("team-a", 0)]);
        assert!(load(&d.path().join("missing")).is_err());
    }

    #[test]
    fn errors_in_tenant_files_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "team-a/bad.yml", "groups: [{name: g, rules: [{alert: A, expr: 'sum('}]}]");
        let errs = load(d.path()).unwrap_err();
        assert!(
            errs[0].to_string().contains("team-a/bad.yml: group \"g\", rule 1 (A)"),
            "{errs:?}"
        );
    }
}
