//! Which images a run produces: indices, conditions, shards.
use crate::{Error, Result};

/// `--shard I/N`: this process makes the images whose index ≡ I (mod N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("--shard `{s}`: expected I/N with 0 <= I < N, e.g. 3/8"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    pub fn is_sharded(&self) -> bool {
        self.count > 1
    }
    /// Suffix for this shard's aggregate files, so shards can share one output directory.
    pub fn suffix(&self) -> String {
        if self.is_sharded() {
            format!(".shard-{}-of-{}", self.index, self.count)
        } else {
            String::new()
        }
    }
}

/// The condition of image `index`: classes cycle through the given list (or through all classes when none is
/// given); captions cycle through the rows of the caption file.
#[derive(Clone, Debug)]
pub struct ImagePlan {
    pub num_images: usize,
    pub classes: Vec<usize>,
    pub num_classes: usize,
    pub num_captions: Option<usize>,
}

impl ImagePlan {
    pub fn condition_of(&self, index: usize) -> usize {
        match self.num_captions {
            Some(n) => index % n,
            None if self.classes.is_empty() => index % self.num_classes,
            None => self.classes[index % self.classes.len()],
        }
    }

    /// How many images until the conditions repeat (the number of classes or captions cycled through).
    pub fn period(&self) -> Option<usize> {
        let p = match self.num_captions {
            Some(n) => n,
            None if self.classes.is_empty() => self.num_classes,
            None => self.classes.len(),
        };
        (p > 0 && p < self.num_images)
            .then_some(p)
            .or(Some(self.num_images.max(1)))
    }

    pub fn indices(&self, shard: Shard) -> impl Iterator<Item = usize> + '_ {
        (0..self.num_images).filter(move |i| i % shard.count == shard.index)
    }
}
