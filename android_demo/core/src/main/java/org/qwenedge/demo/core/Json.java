package org.qwenedge.demo.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.Reader;
import java.io.StringReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * JSON as plain Java values: objects are {@code Map<String, Object>} (insertion order kept), arrays
 * {@code List<Object>}, then {@code String}, {@code Long} (integers), {@code Double}, {@code Boolean}
 * and {@code null}. Parsing is strict (one value, no trailing data, no duplicate keys); writing
 * escapes what JSON requires and nothing more.
 *
 * <p>Written here rather than taken from a library so the core runs on a desktop JVM with no jars
 * (its tests run with {@code javac} and {@code java} alone) and on Android unchanged.
 */
public final class Json {
  private Json() {}

  public static Object parse(String text) {
    return parse(new StringReader(text));
  }

  public static Object parse(Reader in) {
    JsonReader reader = new JsonReader(in);
    Object value = read(reader);
    if (reader.peek() != JsonReader.Kind.END_DOCUMENT) {
      throw new JsonException("trailing data after the value at " + reader.location());
    }
    return value;
  }

  /** Parse a UTF-8 file; a {@link BundleException} naming the file when it cannot be read or parsed. */
  public static Object parseFile(File file) {
    try (Reader in = new InputStreamReader(new FileInputStream(file), StandardCharsets.UTF_8)) {
      return parse(in);
    } catch (IOException e) {
      throw new BundleException(file + ": cannot be read (" + e.getMessage() + ")", e);
    } catch (JsonException e) {
      throw new BundleException(file + ": not valid JSON (" + e.getMessage() + "); re-export the bundle", e);
    }
  }

  /** The next value of {@code reader}, whole. */
  public static Object read(JsonReader reader) {
    switch (reader.peek()) {
      case BEGIN_OBJECT: {
        Map<String, Object> object = new LinkedHashMap<>();
        reader.beginObject();
        while (reader.hasNext()) {
          String name = reader.nextName();
          if (object.containsKey(name)) {
            throw new JsonException("duplicate key \"" + name + "\" at " + reader.location());
          }
          object.put(name, read(reader));
        }
        reader.endObject();
        return object;
      }
      case BEGIN_ARRAY: {
        List<Object> array = new ArrayList<>();
        reader.beginArray();
        while (reader.hasNext()) array.add(read(reader));
        reader.endArray();
        return array;
      }
      case STRING: return reader.nextString();
      case NUMBER: return reader.nextNumber();
      case BOOLEAN: return reader.nextBoolean();
      case NULL:
        reader.nextNull();
        return null;
      default:
        throw new JsonException("expected a value at " + reader.location() + ", found " + reader.peek());
    }
  }

  /** Compact JSON text of a value built from the types above (other numbers are written as numbers). */
  public static String write(Object value) {
    StringBuilder out = new StringBuilder();
    write(value, out);
    return out.toString();
  }

  private static void write(Object value, StringBuilder out) {
    if (value == null || value instanceof Boolean) {
      out.append(value);
    } else if (value instanceof Number) {
      double d = ((Number) value).doubleValue();
      if (Double.isNaN(d) || Double.isInfinite(d)) throw new IllegalArgumentException("JSON has no " + value);
      out.append(value);
    } else if (value instanceof String) {
      quote((String) value, out);
    } else if (value instanceof Map) {
      out.append('{');
      String sep = "";
      for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
        out.append(sep);
        quote(String.valueOf(e.getKey()), out);
        out.append(':');
        write(e.getValue(), out);
        sep = ",";
      }
      out.append('}');
    } else if (value instanceof List) {
      out.append('[');
      String sep = "";
      for (Object item : (List<?>) value) {
        out.append(sep);
        write(item, out);
        sep = ",";
      }
      out.append(']');
    } else {
      throw new IllegalArgumentException("not a JSON value: " + value.getClass().getName());
    }
  }

  private static void quote(String s, StringBuilder out) {
    out.append('"');
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"': out.append("\\\""); break;
        case '\\': out.append("\\\\"); break;
        case '\n': out.append("\\n"); break;
        case '\r': out.append("\\r"); break;
        case '\t': out.append("\\t"); break;
        default:
          if (c < 0x20) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
      }
    }
    out.append('"');
  }
}
