package org.qwenedge.demo.core;

import java.util.Arrays;
import java.util.Objects;

/** Assertions for the core's tests: each failure says what was checked, what was expected and what came. */
final class Check {
  private Check() {}

  /** A block expected to throw. */
  interface Block {
    void run() throws Exception;
  }

  static void equal(Object expected, Object actual, String what) {
    boolean same = expected instanceof int[] && actual instanceof int[]
        ? Arrays.equals((int[]) expected, (int[]) actual)
        : expected instanceof byte[] && actual instanceof byte[]
            ? Arrays.equals((byte[]) expected, (byte[]) actual)
            : Objects.equals(expected, actual);
    if (!same) throw new AssertionError(what + ": expected " + show(expected) + ", got " + show(actual));
  }

  static void isTrue(boolean condition, String what) {
    if (!condition) throw new AssertionError(what);
  }

  /** Runs {@code block}, which must throw {@code type} with a message containing every fragment. */
  static <T extends Throwable> T raises(Class<T> type, Block block, String... fragments) {
    try {
      block.run();
    } catch (Throwable thrown) {
      if (!type.isInstance(thrown)) {
        throw new AssertionError("expected " + type.getSimpleName() + ", got " + thrown, thrown);
      }
      String message = String.valueOf(thrown.getMessage());
      for (String fragment : fragments) {
        if (!message.contains(fragment)) {
          throw new AssertionError("message lacks \"" + fragment + "\": " + message, thrown);
        }
      }
      return type.cast(thrown);
    }
    throw new AssertionError("expected " + type.getSimpleName() + " with " + Arrays.toString(fragments)
        + ", nothing was thrown");
  }

  private static String show(Object value) {
    if (value instanceof int[]) return Arrays.toString((int[]) value);
    if (value instanceof byte[]) return Arrays.toString((byte[]) value);
    if (value instanceof String) return Json.write(value);
    return String.valueOf(value);
  }
}
