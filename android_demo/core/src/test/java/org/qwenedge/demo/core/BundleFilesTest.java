package org.qwenedge.demo.core;

import java.io.File;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

final class BundleFilesTest {
  private BundleFilesTest() {}

  static void testSha256OfAKnownVector() throws Exception {
    File file = new File(Fixtures.tempDir("sha"), "abc");
    Fixtures.write(file, "abc");
    Check.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", BundleFiles.sha256(file), "sha256(abc)");
  }

  static void testVerifyPassesAnUntouchedBundleAndReportsProgress() throws Exception {
    File dir = Fixtures.bundle(Fixtures.tempDir("verify"));
    Manifest m = Manifest.load(dir);
    List<long[]> updates = new ArrayList<>();
    BundleFiles.verify(dir, m.filesToVerify(), (done, total) -> updates.add(new long[] {done, total}));
    long total = 0;
    for (Manifest.FileEntry e : m.filesToVerify()) total += e.sizeBytes;
    long[] last = updates.get(updates.size() - 1);
    Check.equal(total, last[0], "progress ends at the total");
    Check.equal(total, last[1], "total bytes");
  }

  static void testATruncatedFileFailsOnSize() throws Exception {
    File dir = Fixtures.bundle(Fixtures.tempDir("size"));
    Manifest m = Manifest.load(dir);
    Fixtures.write(new File(dir, "model.ptd"), "weight");
    Check.raises(BundleException.Checksum.class, () -> BundleFiles.verify(dir, m.filesToVerify(), null),
        "model.ptd: 6 bytes, the manifest says 12", "copy the bundle again");
  }

  static void testAChangedFileFailsOnSha256() throws Exception {
    File dir = Fixtures.bundle(Fixtures.tempDir("sha"));
    Manifest m = Manifest.load(dir);
    Fixtures.write(new File(dir, "model.pte"), "PROGRAM BYTES");
    Check.raises(BundleException.Checksum.class, () -> BundleFiles.verify(dir, m.filesToVerify(), null),
        "model.pte: sha256", "differs from the manifest's", "changed after export");
  }

  static void testAMissingFileIsNamed() throws Exception {
    File dir = Fixtures.bundle(Fixtures.tempDir("missing"));
    Manifest m = Manifest.load(dir);
    Check.isTrue(new File(dir, "model.ptd").delete(), "deleted");
    Check.raises(BundleException.class, () -> BundleFiles.verify(dir, m.filesToVerify(), null),
        "model.ptd is missing or not a file", "copy the whole bundle");
  }

  static void testALinkOutOfTheBundleIsRefused() throws Exception {
    File dir = Fixtures.bundle(Fixtures.tempDir("link"));
    Manifest m = Manifest.load(dir);
    File outside = new File(Fixtures.tempDir("outside"), "model.ptd");
    Fixtures.write(outside, "weight bytes");
    File inside = new File(dir, "model.ptd");
    Check.isTrue(inside.delete(), "deleted");
    Files.createSymbolicLink(inside.toPath(), outside.toPath());
    Check.raises(BundleException.class, () -> BundleFiles.verify(dir, m.filesToVerify(), null),
        "model.ptd resolves outside the bundle");
  }

  static void testTheStampChangesWithTheFiles() throws Exception {
    File dir = Fixtures.bundle(Fixtures.tempDir("stamp"));
    Manifest m = Manifest.load(dir);
    String before = BundleFiles.stamp(dir, m.filesToVerify());
    Check.equal(before, BundleFiles.stamp(dir, m.filesToVerify()), "stable while nothing changes");
    File weights = new File(dir, "model.ptd");
    Fixtures.write(weights, "weight bytes!");
    Check.isTrue(!before.equals(BundleFiles.stamp(dir, m.filesToVerify())), "a rewritten file changes the stamp");
    Check.equal("", BundleFiles.stamp(dir, Collections.<Manifest.FileEntry>emptyList()), "no files, empty stamp");
  }
}
