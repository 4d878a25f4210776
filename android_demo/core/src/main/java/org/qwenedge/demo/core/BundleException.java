package org.qwenedge.demo.core;

/**
 * A bundle (or runner output) the app cannot use: what is wrong, what was expected, and what to do
 * about it.
 *
 * <p>Messages name the file and the field (for example {@code manifest.json: artifacts[0].files[1].sha256})
 * so they can be shown to the user as they are.
 */
public class BundleException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public BundleException(String message) {
    super(message);
  }

  public BundleException(String message, Throwable cause) {
    super(message, cause);
  }

  /** A file whose size or sha256 differs from its manifest entry: changed or truncated after export. */
  public static final class Checksum extends BundleException {
    private static final long serialVersionUID = 1L;

    public Checksum(String message) {
      super(message);
    }
  }
}
