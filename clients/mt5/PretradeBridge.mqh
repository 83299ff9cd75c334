//+------------------------------------------------------------------+
//| PretradeBridge.mqh - pre-trade risk check for MetaTrader 5       |
//|                                                                  |
//| Asks the pretrade MT5 bridge (`pretrade mt5 run --config ...`)   |
//| for a decision before each OrderSend, over MQL5 sockets, speaking |
//| wire protocol v1 (docs/adapters.md): one JSON object per line.   |
//|                                                                  |
//| FAILS CLOSED: no connection, a send/read error, a timeout, an    |
//| error reply or anything but "verdict":"accept" blocks the order. |
//|                                                                  |
//| The terminal must allow the bridge address: Tools > Options >    |
//| Expert Advisors > "Allow WebRequest for listed URL" (sockets use |
//| the same list). Not compiled in pretrade's CI (MetaEditor only). |
//+------------------------------------------------------------------+
#property strict

#define PRETRADE_PROTOCOL_VERSION 1

class CPretradeBridge
  {
private:
   int               m_socket;
   string            m_host;
   int               m_port;
   uint              m_timeout_ms;
   string            m_account;
   string            m_strategy;
   long              m_next_id;
   string            m_pending;     // bytes read past the last complete line

   bool              EnsureConnected(void)
     {
      if(m_socket!=INVALID_HANDLE && SocketIsConnected(m_socket))
         return(true);
      if(m_socket!=INVALID_HANDLE)
         SocketClose(m_socket);
      m_pending="";
      m_socket=SocketCreate();
      if(m_socket==INVALID_HANDLE)
        {
         PrintFormat("pretrade: SocketCreate failed, error %d",GetLastError());
         return(false);
        }
      if(!SocketConnect(m_socket,m_host,m_port,m_timeout_ms))
        {
         PrintFormat("pretrade: cannot connect to %s:%d, error %d",m_host,m_port,GetLastError());
         SocketClose(m_socket);
         m_socket=INVALID_HANDLE;
         return(false);
        }
      return(true);
     }

   bool              SendLine(const string line)
     {
      uchar bytes[];
      int n=StringToCharArray(line+"\n",bytes,0,WHOLE_ARRAY,CP_UTF8)-1; // drop the terminating 0
      return(SocketSend(m_socket,bytes,n)==n);
     }

   // Reads lines until the reply carrying "id":"<id>" arrives (pushed "control" lines are
   // handed to OnControl); false on timeout or error.
   bool              ReadReply(const string id,string &reply)
     {
      string needle="\"id\":\""+id+"\"";
      uint deadline=GetTickCount()+m_timeout_ms;
      while(GetTickCount()<deadline)
        {
         int nl=StringFind(m_pending,"\n");
         if(nl>=0)
           {
            string line=StringSubstr(m_pending,0,nl);
            m_pending=StringSubstr(m_pending,nl+1);
            if(StringFind(line,needle)>=0)
              {
               reply=line;
               return(true);
              }
            if(StringFind(line,"\"type\":\"control\"")>=0)
               OnControl(line);
            continue;
           }
         uint readable=SocketIsReadable(m_socket);
         if(readable==0)
           {
            Sleep(1);
            continue;
           }
         uchar buffer[];
         int got=SocketRead(m_socket,buffer,readable,deadline-GetTickCount());
         if(got<=0)
            return(false);
         m_pending+=CharArrayToString(buffer,0,got,CP_UTF8);
        }
      return(false);
     }

   string            Request(const string type,const string fields)
     {
      if(!EnsureConnected())
         return("");
      string id=IntegerToString(m_next_id++);
      string line=StringFormat("{\"v\":%d,\"id\":\"%s\",\"type\":\"%s\",%s}",
                               PRETRADE_PROTOCOL_VERSION,id,type,fields);
      string reply="";
      if(!SendLine(line) || !ReadReply(id,reply))
        {
         SocketClose(m_socket);
         m_socket=INVALID_HANDLE;
         return("");
        }
      return(reply);
     }

public:
                     CPretradeBridge(void): m_socket(INVALID_HANDLE),m_port(5757),m_timeout_ms(2500),m_next_id(1) {}
                    ~CPretradeBridge(void) { if(m_socket!=INVALID_HANDLE) SocketClose(m_socket); }

   void              Init(const string host,const int port,const uint timeout_ms,const string account,const string strategy="")
     {
      m_host=host;
      m_port=port;
      m_timeout_ms=timeout_ms;
      m_account=account;
      m_strategy=strategy;
     }

   // Kill switch from the gateway: override to cancel working orders (the default logs).
   virtual void      OnControl(const string line)
     {
      PrintFormat("pretrade: control from gateway: %s",line);
     }

   // The pre-trade check. True only on an explicit accept; `reason` gets the reply (or why
   // there is none). Prices/volumes are normalized exactly as OrderSend will send them.
   bool              Check(MqlTradeRequest &request,const string client_order_id,string &reason)
     {
      int digits=(int)SymbolInfoInteger(request.symbol,SYMBOL_DIGITS);
      bool is_buy=(request.type==ORDER_TYPE_BUY || request.type==ORDER_TYPE_BUY_LIMIT ||
                   request.type==ORDER_TYPE_BUY_STOP || request.type==ORDER_TYPE_BUY_STOP_LIMIT);
      bool is_market=(request.action==TRADE_ACTION_DEAL);
      double price=NormalizeDouble(request.price,digits);
      request.price=price;
      string fields=StringFormat(
         "\"account\":\"%s\",\"strategy\":\"%s\",\"symbol\":\"%s\",\"side\":\"%s\",\"order_type\":\"%s\","
         "\"volume\":%s,\"price\":%s,\"client_order_id\":\"%s\"",
         m_account,m_strategy,request.symbol,is_buy?"buy":"sell",is_market?"market":"limit",
         DoubleToString(request.volume,8),DoubleToString(price,digits),client_order_id);
      string reply=Request("check",fields);
      if(reply=="")
        {
         reason="no decision from the pretrade bridge (timeout or connection error): blocked";
         PrintFormat("pretrade: %s %s",client_order_id,reason);
         return(false);
        }
      if(StringFind(reply,"\"verdict\":\"accept\"")>=0)
         return(true);
      reason=reply;
      PrintFormat("pretrade: order %s REJECTED: %s",client_order_id,reply);
      return(false);
     }

   // A deal (exec_type "fill" / "partial_fill", with volume and price) or the end of an
   // order ("cancelled", "rejected", "expired"); keeps the gateway's exposure right.
   bool              ReportExecution(const string client_order_id,const string exec_type,const string execution_id,
                                     const string symbol,const double volume,const double price)
     {
      int digits=(int)SymbolInfoInteger(symbol,SYMBOL_DIGITS);
      string fields=StringFormat(
         "\"account\":\"%s\",\"client_order_id\":\"%s\",\"exec_type\":\"%s\",\"execution_id\":\"%s\","
         "\"symbol\":\"%s\",\"volume\":%s,\"price\":%s",
         m_account,client_order_id,exec_type,execution_id,symbol,DoubleToString(volume,8),
         DoubleToString(NormalizeDouble(price,digits),digits));
      string reply=Request("execution",fields);
      if(reply=="" || StringFind(reply,"\"type\":\"execution_result\"")<0)
        {
         PrintFormat("pretrade: execution %s of %s not reported: %s",execution_id,client_order_id,reply);
         return(false);
        }
      return(true);
     }
  };

// Drop-in OrderSend replacement: checks first, fails closed.
bool PretradeOrderSend(CPretradeBridge &bridge,MqlTradeRequest &request,MqlTradeResult &result,const string client_order_id)
  {
   string reason;
   if(!bridge.Check(request,client_order_id,reason))
     {
      ZeroMemory(result);
      result.retcode=TRADE_RETCODE_REJECT;
      result.comment=StringSubstr("pretrade: "+reason,0,31);
      return(false);
     }
   request.comment=client_order_id;   // ties the deals back to the checked order
   return(OrderSend(request,result));
  }
//+------------------------------------------------------------------+
