//! A directory of models, addressed by validated names.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{ModelError, validate_name};

/// The safetensors file of a model directory.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The tokenizer file of a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The config file of a model directory.
pub const CONFIG_FILE: &str = "config.json";

/// The files of one model, as canonical paths inside the repository directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// Weights (`model.safetensors`).
    pub safetensors: PathBuf,
    /// Hugging Face tokenizer (`tokenizer.json`).
    pub tokenizer: PathBuf,
    /// Model config (`config.json`).
    pub config: PathBuf,
}

/// A directory whose subdirectories are models: `DIR/NAME/{model.safetensors, tokenizer.json,
/// config.json}`. Names are checked with [`validate_name`], and every path handed out is
/// canonicalized and checked to stay inside the directory (no symlink escapes).
#[derive(Debug, Clone)]
pub struct ModelRepository {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.to_owned(), source }
}

impl ModelRepository {
    /// Opens a repository directory (which must exist).
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let root = fs::canonicalize(dir).map_err(io(dir))?;
        if !root.is_dir() {
            return Err(ModelError::NotFound(format!("{} is not a directory", dir.display())));
        }
        Ok(Self { root })
    }

    /// The repository directory, canonicalized.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names of the complete models (valid name, all three files present), sorted. Entries that
    /// cannot be read are skipped.
    pub fn names(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| self.files(n).is_ok())
            .collect();
        names.sort();
        names
    }

    /// The files of model `name`: the name is validated, and each file must exist, be a regular
    /// file and (after resolving symlinks) lie inside the repository directory.
    pub fn files(&self, name: &str) -> Result<ModelFiles, ModelError> {
        validate_name(name)?;
        let dir = self.inside(&self.root.join(name), name)?;
        if !dir.is_dir() {
            return Err(ModelError::NotFound(format!("model {name:?}")));
        }
        let file = |f: &str| -> Result<PathBuf, ModelError> {
            let p = self.inside(&dir.join(f), name)?;
            if p.is_file() { Ok(p) } else { Err(ModelError::NotFound(format!("model {name:?}: {f}"))) }
        };
        Ok(ModelFiles {
            safetensors: file(SAFETENSORS_FILE)?,
            tokenizer: file(TOKENIZER_FILE)?,
            config: file(CONFIG_FILE)?,
        })
    }

    /// Canonicalizes `path` and checks it stays under the root.
    fn inside(&self, path: &Path, name: &str) -> Result<PathBuf, ModelError> {
        let canon = match fs::canonicalize(path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ModelError::NotFound(format!("model {name:?}: {}", path.display())));
            }
            Err(e) => return Err(ModelError::Io { path: path.to_owned(), source: e }),
        };
        if canon.starts_with(&self.root) && canon != self.root {
            Ok(canon)
        } else {
            Err(ModelError::NotFound(format!("model {name:?}: path leaves the model directory")))
        }
    }
}

impl ModelFiles {
    /// The three files of the model directory `dir`, without a repository's checks (for tools and
    /// tests that point at one model directly).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            safetensors: dir.join(SAFETENSORS_FILE),
            tokenizer: dir.join(TOKENIZER_FILE),
            config: dir.join(CONFIG_FILE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rela-models-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finds_complete_models_only() {
        let root = tempdir("repo");
        for (name, files) in [
            ("good", &[SAFETENSORS_FILE, TOKENIZER_FILE, CONFIG_FILE][..]),
            ("partial", &[SAFETENSORS_FILE]),
            (".hidden", &[SAFETENSORS_FILE, TOKENIZER_FILE, CONFIG_FILE]),
        ] {
            fs::create_dir_all(root.join(name)).unwrap();
            for f in files {
                fs::write(root.join(name).join(f), b"x").unwrap();
            }
        }
        let repo = ModelRepository::open(&root).unwrap();
        assert_eq!(repo.names(), vec!["good".to_owned()]);
        let files = repo.files("good").unwrap();
        assert!(files.safetensors.starts_with(repo.root()));
        assert!(matches!(repo.files("partial"), Err(ModelError::NotFound(_))));
        assert!(matches!(repo.files("absent"), Err(ModelError::NotFound(_))));
        for bad in ["../x", "a/b", ".hidden", "", &"x".repeat(65)] {
            assert!(matches!(repo.files(bad), Err(ModelError::InvalidName { .. })), "{bad:?}");
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_cannot_escape() {
        let root = tempdir("links");
        let outside = tempdir("outside");
        for f in [SAFETENSORS_FILE, TOKENIZER_FILE, CONFIG_FILE] {
            fs::write(outside.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        fs::create_dir_all(root.join("half")).unwrap();
        std::os::unix::fs::symlink(outside.join(SAFETENSORS_FILE), root.join("half").join(SAFETENSORS_FILE))
            .unwrap();
        for f in [TOKENIZER_FILE, CONFIG_FILE] {
            fs::write(root.join("half").join(f), b"x").unwrap();
        }
        let repo = ModelRepository::open(&root).unwrap();
        assert!(matches!(repo.files("escape"), Err(ModelError::NotFound(_))));
        assert!(matches!(repo.files("half"), Err(ModelError::NotFound(_))));
        assert!(repo.names().is_empty());
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
