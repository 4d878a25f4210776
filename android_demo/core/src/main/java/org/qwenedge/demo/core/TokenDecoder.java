package org.qwenedge.demo.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The bytes of chosen token ids, read from a byte-level BPE {@code tokenizer.json} (Qwen's kind).
 *
 * <p>The self-check compares the runner's text with the reference's token ids, so it needs each
 * expected id as bytes. Only those ids are kept: the file (33 MB for Qwen, 248k entries) is
 * streamed, never held. Decoding follows the Hugging Face ByteLevel decoder: every character of a
 * token maps back to one byte (the GPT-2 byte-to-unicode table); a token with a character outside
 * the table (special tokens are plain text) is taken as its UTF-8 text.
 *
 * <p>Not here: encoding text, which the runner does with its own tokenizer.
 */
public final class TokenDecoder {
  private static final Map<Character, Byte> UNICODE_TO_BYTE = byteLevelTable();

  private final Map<Integer, byte[]> bytes;

  private TokenDecoder(Map<Integer, byte[]> bytes) {
    this.bytes = bytes;
  }

  /** A decoder for {@code ids}, scanned from a tokenizer.json file. */
  public static TokenDecoder load(File tokenizerJson, Collection<Integer> ids) {
    try (Reader in = new InputStreamReader(new FileInputStream(tokenizerJson), StandardCharsets.UTF_8)) {
      return read(in, ids, tokenizerJson.getName());
    } catch (IOException e) {
      throw new BundleException(tokenizerJson + ": cannot be read (" + e.getMessage() + ")", e);
    }
  }

  /** A decoder for {@code ids}, scanned from tokenizer.json text ({@code name} is for messages). */
  public static TokenDecoder read(Reader tokenizerJson, Collection<Integer> ids, String name) {
    Set<Integer> wanted = new HashSet<>(ids);
    Map<Integer, String> found = new HashMap<>();
    Map<Integer, String> added = new HashMap<>();
    String decoder = null;
    String model = null;
    try (JsonReader reader = new JsonReader(tokenizerJson)) {
      reader.beginObject();
      while (reader.hasNext()) {
        String key = reader.nextName();
        if (key.equals("added_tokens")) {
          readAddedTokens(reader, wanted, added);
        } else if (key.equals("decoder") && reader.peek() == JsonReader.Kind.BEGIN_OBJECT) {
          decoder = typeOf(reader, null, wanted, found);
        } else if (key.equals("model")) {
          model = typeOf(reader, "vocab", wanted, found);
        } else {
          reader.skipValue();
        }
      }
    } catch (JsonException e) {
      throw new BundleException(name + ": not valid JSON (" + e.getMessage() + "); re-export the bundle", e);
    }
    if (!"ByteLevel".equals(decoder) || !"BPE".equals(model)) {
      throw new BundleException(name + ": a " + model + " model with a " + decoder + " decoder; the self-check"
          + " decodes byte-level BPE tokenizers (Qwen's) only");
    }
    found.putAll(added); // added tokens win, as in the Hugging Face tokenizer
    Map<Integer, byte[]> bytes = new HashMap<>();
    for (Integer id : wanted) {
      String token = found.get(id);
      if (token == null) throw new BundleException(name + ": no token with id " + id + "; is it the model's tokenizer?");
      bytes.put(id, tokenBytes(token));
    }
    return new TokenDecoder(bytes);
  }

  /** The bytes of each id, in order. */
  public List<byte[]> pieces(int[] ids) {
    List<byte[]> out = new ArrayList<>(ids.length);
    for (int id : ids) {
      byte[] b = bytes.get(id);
      if (b == null) throw new IllegalArgumentException("token id " + id + " was not loaded into this decoder");
      out.add(b);
    }
    return out;
  }

  /** The text of {@code ids}, joined as bytes first (a character may span tokens). */
  public String decode(int[] ids) {
    return utf8(concat(pieces(ids)));
  }

  static String utf8(byte[] bytes) {
    return new String(bytes, StandardCharsets.UTF_8);
  }

  static byte[] concat(List<byte[]> pieces) {
    int size = 0;
    for (byte[] p : pieces) size += p.length;
    byte[] out = new byte[size];
    int at = 0;
    for (byte[] p : pieces) {
      System.arraycopy(p, 0, out, at, p.length);
      at += p.length;
    }
    return out;
  }

  /** A token's bytes under the ByteLevel decoder. */
  static byte[] tokenBytes(String token) {
    byte[] out = new byte[token.length()];
    for (int i = 0; i < token.length(); i++) {
      Byte b = UNICODE_TO_BYTE.get(token.charAt(i));
      if (b == null) return token.getBytes(StandardCharsets.UTF_8);
      out[i] = b;
    }
    return out;
  }

  private static void readAddedTokens(JsonReader reader, Set<Integer> wanted, Map<Integer, String> added) {
    reader.beginArray();
    while (reader.hasNext()) {
      Integer id = null;
      String content = null;
      reader.beginObject();
      while (reader.hasNext()) {
        String key = reader.nextName();
        if (key.equals("id")) {
          id = reader.nextNumber().intValue();
        } else if (key.equals("content")) {
          content = reader.nextString();
        } else {
          reader.skipValue();
        }
      }
      reader.endObject();
      if (id != null && content != null && wanted.contains(id)) added.put(id, content);
    }
    reader.endArray();
  }

  /** An object's "type"; with {@code vocabKey}, also the wanted ids of its token -> id member. */
  private static String typeOf(JsonReader reader, String vocabKey, Set<Integer> wanted, Map<Integer, String> found) {
    String type = null;
    reader.beginObject();
    while (reader.hasNext()) {
      String key = reader.nextName();
      if (key.equals("type") && reader.peek() == JsonReader.Kind.STRING) {
        type = reader.nextString();
      } else if (key.equals(vocabKey) && reader.peek() == JsonReader.Kind.BEGIN_OBJECT) {
        reader.beginObject();
        while (reader.hasNext()) {
          String token = reader.nextName();
          int id = reader.nextNumber().intValue();
          if (wanted.contains(id)) found.put(id, token);
        }
        reader.endObject();
      } else {
        reader.skipValue();
      }
    }
    reader.endObject();
    return type;
  }

  /** GPT-2's byte-to-unicode table, inverted: printable bytes stand for themselves, the rest from U+0100 on. */
  private static Map<Character, Byte> byteLevelTable() {
    Map<Character, Byte> table = new HashMap<>();
    int next = 256;
    for (int b = 0; b < 256; b++) {
      boolean printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      table.put((char) (printable ? b : next++), (byte) b);
    }
    return table;
  }
}
