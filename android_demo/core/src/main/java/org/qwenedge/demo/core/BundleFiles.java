package org.qwenedge.demo.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.List;

/**
 * The files of a bundle on disk: where each manifest entry lives, and whether it is the file the
 * exporter wrote (size, then sha256).
 *
 * <p>Hashing a 0.8B fp32 program (3 GB) takes seconds on a phone, so the app verifies once and keeps
 * a {@link #stamp} (paths, sizes, modification times); while the stamp is unchanged the files are
 * too, unless someone rewrote them in place with the same size and time.
 */
public final class BundleFiles {
  private BundleFiles() {}

  /** Reports hashing progress: bytes hashed so far of the total. */
  public interface Progress {
    void update(long done, long total);
  }

  /** {@code root/entry.path}, refusing a path that leaves the bundle (through a link, too). */
  public static File resolve(File root, Manifest.FileEntry entry) {
    File file = new File(root, entry.path);
    try {
      String base = root.getCanonicalPath() + File.separator;
      if (!file.getCanonicalPath().startsWith(base)) {
        throw new BundleException(Contract.MANIFEST_FILE + ": " + entry.path
            + " resolves outside the bundle (a symbolic link?); bundles hold plain files");
      }
    } catch (IOException e) {
      throw new BundleException(file + ": cannot resolve (" + e.getMessage() + ")", e);
    }
    if (!file.isFile()) {
      throw new BundleException(file + " is missing or not a file; copy the whole bundle directory");
    }
    return file;
  }

  /** Check every entry's size and sha256; the first mismatch raises {@link BundleException.Checksum}. */
  public static void verify(File root, List<Manifest.FileEntry> entries, Progress progress) {
    long total = 0;
    for (Manifest.FileEntry entry : entries) {
      File file = resolve(root, entry);
      if (file.length() != entry.sizeBytes) {
        throw new BundleException.Checksum(file + ": " + file.length() + " bytes, the manifest says "
            + entry.sizeBytes + ": the copy is incomplete or the file changed; copy the bundle again");
      }
      total += entry.sizeBytes;
    }
    long done = 0;
    for (Manifest.FileEntry entry : entries) {
      File file = resolve(root, entry);
      String actual = sha256(file, done, total, progress);
      if (!actual.equals(entry.sha256)) {
        throw new BundleException.Checksum(file + ": sha256 " + actual.substring(0, 12) + "... differs from the manifest's "
            + entry.sha256.substring(0, 12) + "...: the file changed after export; copy the bundle again");
      }
      done += entry.sizeBytes;
    }
  }

  /** Lowercase hex sha256 of a file. */
  public static String sha256(File file) {
    return sha256(file, 0, file.length(), null);
  }

  /** Paths, sizes and modification times of the entries: equal stamps mean already-verified files. */
  public static String stamp(File root, List<Manifest.FileEntry> entries) {
    StringBuilder out = new StringBuilder();
    for (Manifest.FileEntry entry : entries) {
      File file = resolve(root, entry);
      out.append(entry.path).append(':').append(entry.sha256).append(':')
          .append(file.length()).append(':').append(file.lastModified()).append('\n');
    }
    return out.toString();
  }

  private static String sha256(File file, long before, long total, Progress progress) {
    MessageDigest digest;
    try {
      digest = MessageDigest.getInstance("SHA-256");
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("this Java runtime has no SHA-256", e);
    }
    byte[] block = new byte[1 << 20];
    long done = before;
    try (InputStream in = new FileInputStream(file)) {
      for (int n; (n = in.read(block)) > 0; ) {
        digest.update(block, 0, n);
        done += n;
        if (progress != null) progress.update(done, total);
      }
    } catch (IOException e) {
      throw new BundleException(file + ": cannot be read (" + e.getMessage() + ")", e);
    }
    StringBuilder hex = new StringBuilder();
    for (byte b : digest.digest()) hex.append(String.format("%02x", b));
    return hex.toString();
  }
}
