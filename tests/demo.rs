//! The main job on a fresh clone: `llamagen generate --out DIR` with no model flags runs the bundled demo model
//! (models/demo), writes one image of each of the 10 classes, and the images are real (not constant, different
//! from class to class), reproducible for a fixed seed and different for another seed.
use llamagen::io::png;
use std::path::Path;
use std::process::Command;

fn generate(out: &Path, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .arg("generate")
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("LLAMAGEN_DEMO_DIR")
        .output()
        .expect("start llamagen");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "llamagen generate failed:\n{err}");
    err
}

/// Grey values of an image (mean over RGB), and its standard deviation.
fn grey(path: &Path) -> (Vec<f64>, f64) {
    let (rgb, w, h) = png::read_rgb(path).expect("a PNG");
    assert_eq!((w, h), (32, 32), "{}: demo images are 32×32", path.display());
    let g: Vec<f64> = rgb
        .chunks(3)
        .map(|p| p.iter().map(|&v| v as f64).sum::<f64>() / 3.0)
        .collect();
    let mean = g.iter().sum::<f64>() / g.len() as f64;
    let var = g.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / g.len() as f64;
    (g, var.sqrt())
}

#[test]
fn default_command_writes_every_class_reproducibly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let log = generate(&a, &[]);
    assert!(
        log.contains("demo model"),
        "the default run says it uses the demo model:\n{log}"
    );

    let manifest = std::fs::read_to_string(a.join("manifest.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = manifest.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 10, "one image per class");
    let names: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string("models/demo/classes.json").unwrap()).unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["class"], i as u64, "image {i} is of class {i}");
        assert_eq!(r["class_name"], names[i].as_str());
        assert_eq!(r["cfg_scale"], 2.0, "the tuned demo default");
    }
    assert!(a.join("grid.png").is_file());

    let imgs: Vec<(Vec<f64>, f64)> = (0..10).map(|i| grey(&a.join(format!("{i:06}.png")))).collect();
    for (i, (_, sd)) in imgs.iter().enumerate() {
        // Fashion-MNIST items on a black background: a constant or near-constant image is a broken pipeline.
        assert!(
            *sd > 20.0,
            "image {i}: grey standard deviation {sd:.1} (constant image?)"
        );
    }
    // Classes differ: mean absolute difference between every pair of images.
    for i in 0..10 {
        for j in i + 1..10 {
            let d: f64 = imgs[i]
                .0
                .iter()
                .zip(&imgs[j].0)
                .map(|(x, y)| (x - y).abs())
                .sum::<f64>()
                / 1024.0;
            assert!(d > 5.0, "images {i} and {j} are nearly identical (mean |diff| {d:.2})");
        }
    }

    generate(&b, &[]);
    generate(&c, &["--seed", "1"]);
    let mut differ = 0;
    for i in 0..10 {
        let f = format!("{i:06}.png");
        let (pa, pb, pc) = (
            std::fs::read(a.join(&f)).unwrap(),
            std::fs::read(b.join(&f)).unwrap(),
            std::fs::read(c.join(&f)).unwrap(),
        );
        assert_eq!(pa, pb, "{f}: the same seed gives the same bytes");
        differ += usize::from(pa != pc);
    }
    assert!(differ >= 9, "seed 1 changes the images ({differ} of 10 differ)");
}

/// The shipped VQ (encoder included) loads through every check and reconstructs a demo image closely: the
/// tokenizer's test-set PSNR is 24.6 dB, and its own samples are its easiest inputs.
#[test]
fn demo_vq_reconstructs_a_generated_image() {
    let tmp = tempfile::tempdir().unwrap();
    let (gen, rec) = (tmp.path().join("gen"), tmp.path().join("rec"));
    generate(&gen, &["--num-images", "2"]);
    let o = Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .args([
            "reconstruct",
            "--vq",
            "models/demo/vq.safetensors",
            "--image-size",
            "32",
            "--out",
        ])
        .arg(&rec)
        .arg(gen.join("000001.png"))
        .output()
        .expect("start llamagen");
    assert!(
        o.status.success(),
        "reconstruct failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (a, _) = grey(&gen.join("000001.png"));
    let (b, _) = grey(&rec.join("000000.png"));
    let mse = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64;
    let psnr = 10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10();
    eprintln!("demo VQ reconstruction of a generated trouser: PSNR {psnr:.1} dB");
    assert!(psnr > 20.0, "reconstruction PSNR {psnr:.1} dB");
}
