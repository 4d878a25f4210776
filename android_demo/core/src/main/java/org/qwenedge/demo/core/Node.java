package org.qwenedge.demo.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * A parsed JSON value with its file and path, for typed reads that fail with a message naming both:
 * {@code manifest.json: artifacts[0].files[1].sha256 is missing or not a string}, then what to do.
 */
public final class Node {
  /** The usual fix for a bundle file that does not hold what the app expects. */
  public static final String REEXPORT = "re-export the bundle with `qwen-edge export`";

  private final String file;
  private final String path;
  private final Object value;
  private final boolean present;
  private final String hint;

  private Node(String file, String path, Object value, boolean present, String hint) {
    this.file = file;
    this.path = path;
    this.value = value;
    this.present = present;
    this.hint = hint;
  }

  /** The top-level value of the bundle file {@code file} (a name for messages, such as "manifest.json"). */
  public static Node root(String file, Object value) {
    return root(file, value, REEXPORT);
  }

  /** The top-level value of {@code file}; {@code hint} ends every error message about it. */
  public static Node root(String file, Object value, String hint) {
    return new Node(file, "", value, true, hint);
  }

  /** Member {@code key} of this object (absent when this object lacks it). */
  public Node get(String key) {
    Map<?, ?> object = object();
    String where = path.isEmpty() ? key : path + "." + key;
    return new Node(file, where, object.get(key), object.containsKey(key), hint);
  }

  public boolean has(String key) {
    return value instanceof Map && ((Map<?, ?>) value).containsKey(key);
  }

  public boolean isNull() {
    return present && value == null;
  }

  public Map<?, ?> object() {
    if (!(value instanceof Map)) throw problem("is missing or not a JSON object");
    return (Map<?, ?>) value;
  }

  /** The elements of this array, each as a node with its index in the path. */
  public List<Node> list() {
    if (!(value instanceof List)) throw problem("is missing or not a JSON array");
    List<?> items = (List<?>) value;
    List<Node> nodes = new ArrayList<>(items.size());
    for (int i = 0; i < items.size(); i++) nodes.add(new Node(file, path + "[" + i + "]", items.get(i), true, hint));
    return Collections.unmodifiableList(nodes);
  }

  public String string() {
    if (!(value instanceof String)) throw problem("is missing or not a string");
    return (String) value;
  }

  /** The string, or null when the field is absent or JSON null. */
  public String stringOrNull() {
    return value == null ? null : string();
  }

  public long longValue() {
    if (!(value instanceof Long)) throw problem("is missing or not an integer");
    return (Long) value;
  }

  public int intValue() {
    long v = longValue();
    if (v < Integer.MIN_VALUE || v > Integer.MAX_VALUE) throw problem("is out of range (" + v + ")");
    return (int) v;
  }

  public double doubleValue() {
    if (!(value instanceof Number)) throw problem("is missing or not a number");
    return ((Number) value).doubleValue();
  }

  public boolean bool() {
    if (!(value instanceof Boolean)) throw problem("is missing or not true/false");
    return (Boolean) value;
  }

  public int[] intArray() {
    List<Node> items = list();
    int[] out = new int[items.size()];
    for (int i = 0; i < out.length; i++) out[i] = items.get(i).intValue();
    return out;
  }

  public String where() {
    return file + ": " + (path.isEmpty() ? "top level" : path);
  }

  /** A bundle error about this value: what is wrong with it, and the usual fix. */
  public BundleException problem(String what) {
    return new BundleException(where() + " " + what + "; " + hint);
  }
}
